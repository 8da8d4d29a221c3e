"""The on-disk audit spool: records are accepted here and wait for S3. Spec: SPOOL.md.

- `store.py`: the spool itself — append, group-commit fsync, seal, lease,
  delete; the spool-full limit.
- `recovery.py`: the segment file format (frames, header) and the recovery
  decision table for what a dead process left.
- `writers.py`: writer slots — each process's `writerId` and its gap-free
  `seq` counter, durable before the records that carry them.
"""

from __future__ import annotations

from .store import (
    QUARANTINE_DIR,
    SegmentContents,
    SegmentLease,
    Spool,
    SpoolError,
    SpoolFailed,
    SpoolFull,
    segment_stem,
)

__all__ = [
    "QUARANTINE_DIR",
    "SegmentContents",
    "SegmentLease",
    "Spool",
    "SpoolError",
    "SpoolFailed",
    "SpoolFull",
    "segment_stem",
]
