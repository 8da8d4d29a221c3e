"""What one load-generator process is told to do, and what it reports back (both JSON files).

The parent writes a `Workload` per generator process and reads its
`GeneratorResult` once the process exits. Times are `time.monotonic()` values,
which on Linux are one clock for every process of the machine, so the parent
and its generators agree on when the measurement window opens and closes.

Invariants:
- Workers start staggered over `stagger_s` (worker k of `total_workers` at
  `start_at + stagger_s * k / total_workers`) so a closed loop of equal-length
  streams does not march in lock-step waves.
- Only responses whose last byte arrived inside [`window_from`, `window_until`)
  count as completed requests; only events read inside it count as events; a TTFT
  sample counts when its first token arrived inside it.
- No request starts at or after `window_until`; those in flight then are read to
  the end (`drain_s` at most), so every request the system answered is complete.
- `responded_ids` lists every request id that got a status line back: the
  requests the system under test certainly saw, which its audit trail must hold.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workload:
    host: str
    port: int
    path: str
    body: str
    headers: list[tuple[str, str]]
    stream: bool
    workers: list[int]  # global indexes of this process's closed-loop workers
    total_workers: int
    id_prefix: str
    start_at: float
    stagger_s: float
    window_from: float
    window_until: float
    drain_s: float
    request_timeout_s: float

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Workload:
        raw = json.loads(path.read_text())
        raw["headers"] = [tuple(pair) for pair in raw["headers"]]
        return cls(**raw)


@dataclass
class GeneratorResult:
    requests_started: int = 0
    responded_ids: list[str] = field(default_factory=list)
    completed: int = 0  # in the window
    events: int = 0  # in the window
    body_bytes: int = 0  # in the window
    latency_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # whole run, by kind
    unfinished: int = 0  # still in flight when the drain ran out

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> GeneratorResult:
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(**raw)
