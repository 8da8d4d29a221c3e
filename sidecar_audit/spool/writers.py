"""Writer identity and sequence numbers: who wrote a record, and its place in that writer's line.

One job: hand out `(writerId, seq)` pairs that are unique and gap-free per
writer, across restarts, crashes and SO_REUSEPORT workers sharing one spool.

A writer is a **slot** in `<spool>/writers/`: the file `<writerId>.seq`, held
with an exclusive flock for the life of the process that owns it. A process
takes the first slot (in name order) whose lock is free — the slot of a
previous process on this spool, which died or stopped — and only creates a new
one (a fresh random 16-hex-digit id) when every slot is held. So a spool keeps
its writer ids across restarts, and N workers on one spool are N writers.

Slot file (12 bytes, little-endian), written with one pwrite at offset 0:

    0  8  next     u64, the next seq this writer will assign
    8  4  CRC32    zlib.crc32 over bytes 0..8

Invariants:
- `assign()` writes the new `next` *before* returning the seq, so a seq is
  recorded as used before any record carries it: a later process never reuses
  a seq a record may hold (it may skip one — a record that was never written —
  which verify then shows as missing, the truth).
- The slot survives a SIGKILL as soon as the pwrite returns (page cache). For a
  host crash the spool fsyncs the slot after every segment fsync (`sync()`, on
  the spool's sync thread): any record that reached the disk has a seq below
  the `next` that reached the disk.
- A slot whose 12 bytes do not check out is left alone (renamed `.bad`) and a
  new writer id is created: a new line of seqs, never a reused one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import struct
import zlib
from pathlib import Path

from .recovery import fsync_dir

log = logging.getLogger(__name__)

WRITERS_DIR = "writers"
SLOT_SUFFIX = ".seq"
_SLOT = struct.Struct("<QI")


class SlotDamaged(ValueError):
    """The slot file's bytes do not check out."""


def encode_slot(next_seq: int) -> bytes:
    head = struct.pack("<Q", next_seq)
    return head + struct.pack("<I", zlib.crc32(head))


def decode_slot(data: bytes) -> int:
    if len(data) != _SLOT.size:
        raise SlotDamaged(f"slot holds {len(data)} bytes, not {_SLOT.size}")
    next_seq, crc = _SLOT.unpack(data)
    if zlib.crc32(data[:8]) != crc:
        raise SlotDamaged("slot CRC32 mismatch")
    return next_seq


class WriterSlot:
    """The writer identity of this process and its sequence counter."""

    def __init__(self, path: Path, fd: int, writer_id: str, next_seq: int) -> None:
        self._path = path
        self._fd = fd
        self.writer_id = writer_id
        self._next = next_seq

    @classmethod
    def claim(cls, spool_dir: Path) -> WriterSlot:
        """Take a free slot of this spool (continuing its seqs) or create a new one."""
        directory = Path(spool_dir) / WRITERS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(directory)):
            if not name.endswith(SLOT_SUFFIX):
                continue
            slot = cls._try_take(directory / name)
            if slot is not None:
                return slot
        return cls._create(directory)

    @classmethod
    def _try_take(cls, path: Path) -> WriterSlot | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            next_seq = decode_slot(os.pread(fd, 64, 0))
        except SlotDamaged as exc:
            log.error(
                "audit writer slot damaged; starting a new writer id",
                extra={"slot": path.name, "error": str(exc)},
            )
            with contextlib.suppress(OSError):
                os.rename(path, path.with_name(path.name + ".bad"))
            os.close(fd)
            return None
        return cls(path, fd, path.name.removesuffix(SLOT_SUFFIX), next_seq)

    @classmethod
    def _create(cls, directory: Path) -> WriterSlot:
        while True:
            writer_id = secrets.token_hex(8)
            path = directory / f"{writer_id}{SLOT_SUFFIX}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, encode_slot(0), 0)
            os.fsync(fd)
            fsync_dir(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, writer_id, 0)

    @property
    def next_seq(self) -> int:
        return self._next

    def assign(self) -> int:
        """The next seq, recorded as used (pwrite) before it is returned; raises OSError."""
        seq = self._next
        os.pwrite(self._fd, encode_slot(seq + 1), 0)
        self._next = seq + 1
        return seq

    def sync(self) -> None:
        """fsync the slot (from the spool's sync thread, after a segment fsync)."""
        if self._fd >= 0:
            os.fdatasync(self._fd)

    def close(self) -> None:
        """Release the slot (its lock) for the next process on this spool."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)
