"""Spool segment files: their byte format, and reading one back safely after any crash.

One job: turn the bytes of a segment file into the records it really holds, and
nothing else. Writing records is `store.py`'s job; it uses the encoders here so
that the format lives in one place. SPOOL.md is the full spec; the layout is
pinned byte for byte by tests/sidecar/test_spool.py.

Segment file = header, then frames. All integers little-endian.

    header (40 bytes)
      0   8  magic      b"CLLMSPOL"
      8   2  version    u16 = 1
      10  2  length     u16 = 40 (header bytes, this field included)
      12  8  writer id  8 raw bytes (shown as 16 hex digits in file names)
      20  8  sequence   u64, per writer, from 0
      28  8  created    i64, microseconds since the Unix epoch, UTC
      36  4  CRC32      zlib.crc32 over bytes 0..36

    frame (20 bytes + payload)
      0   4  sync magic F7 A5 5A 1F (0xF7 never occurs in UTF-8, so never in a payload)
      4   4  length     u32, payload bytes, at most MAX_PAYLOAD_BYTES
      8   8  time       i64, the record's request start, microseconds since the epoch
      16  4  CRC32      zlib.crc32 (IEEE 802.3, not CRC32C) over bytes 4..16 + payload
      20  n  payload    one audit record, orjson, no newline

Invariants:
- A record is what a frame whose CRC32 validates says it is; nothing else is
  ever returned (never invent records), and every validating frame is returned.
- Bytes that are not part of a validating frame are copied to the quarantine
  folder (once: the copy's name is derived from the segment and the byte range)
  and counted; a torn tail (bad bytes with no valid frame after them) is then
  cut off the file.
- Callers hold an exclusive flock on a segment before recovering it
  (`try_lock`), so no live writer or other shipper is touching it.

Recovery decision table (`recover_file`; one test per row in
tests/test_spool/recovery.py):

| file holds                                  | verdict    | action                              |
| ------------------------------------------- | ---------- | ----------------------------------- |
| 0 bytes (writer died before its header)     | EMPTY      | delete the file                     |
| short header, bad magic/version/CRC         | BAD_HEADER | move the whole file to quarantine   |
| header + valid frames to the end            | RECORDS    | nothing                             |
| bad bytes, no valid frame after (torn tail) | RECORDS    | quarantine the bytes, truncate      |
| bad bytes, then a valid frame (mid-file)    | RECORDS    | quarantine the bytes, skip on reads |
| a valid header, no valid frame left         | NO_RECORDS | quarantine bad bytes, delete file   |
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_MAGIC = b"CLLMSPOL"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHH8sQqI")
HEADER_SIZE = HEADER.size  # 40

FRAME_MAGIC = b"\xf7\xa5\x5a\x1f"
FRAME_HEAD = struct.Struct("<4sIqI")
FRAME_OVERHEAD = FRAME_HEAD.size  # 20
_CRC_COVERED = struct.Struct("<Iq")  # the length and time fields, as the CRC sees them
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

Fsync = Callable[[int], None]


# --- header ---------------------------------------------------------------------------


class BadHeader(ValueError):
    """The first bytes of a file are not a segment header this code can read."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    writer_id: str  # 16 lowercase hex digits
    sequence: int
    created_us: int


def encode_header(header: SegmentHeader) -> bytes:
    body = HEADER.pack(
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        HEADER_SIZE,
        bytes.fromhex(header.writer_id),
        header.sequence,
        header.created_us,
        0,
    )[: HEADER_SIZE - 4]
    return body + struct.pack("<I", zlib.crc32(body))


def decode_header(data: bytes) -> SegmentHeader:
    if len(data) < HEADER_SIZE:
        raise BadHeader(f"short header: {len(data)} bytes")
    magic, version, length, writer, sequence, created_us, crc = HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise BadHeader("bad magic")
    if zlib.crc32(data[: HEADER_SIZE - 4]) != crc:
        raise BadHeader("header CRC32 mismatch")
    if version != FORMAT_VERSION or length != HEADER_SIZE:
        raise BadHeader(f"unsupported version {version} (header length {length})")
    return SegmentHeader(writer.hex(), sequence, created_us)


# --- frames ---------------------------------------------------------------------------


def encode_frame(payload: bytes, time_us: int) -> bytes:
    covered = _CRC_COVERED.pack(len(payload), time_us)
    crc = zlib.crc32(payload, zlib.crc32(covered))
    return FRAME_MAGIC + covered + struct.pack("<I", crc) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose CRC32 validated: one record. Offsets are positions in the file."""

    offset: int
    end: int
    time_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Corrupt:
    """Bytes [offset, end) that belong to no valid frame; `at_end`: no valid frame follows."""

    offset: int
    end: int
    at_end: bool


class _Need(enum.Enum):
    MORE = enum.auto()
    BAD = enum.auto()


class FrameDecoder:
    """Incremental, pure: `feed(bytes)` returns the frames and corrupt ranges it can decide.

    After a bad frame it resynchronises on the next sync magic whose whole frame
    validates; `finish()` reports whatever is left undecided as a corrupt tail.
    """

    def __init__(self, base_offset: int = 0, max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        self._buf = bytearray()
        self._base = base_offset  # file offset of _buf[0]
        self._bad_from: int | None = None  # file offset where the current bad run began
        self._max_payload = max_payload

    def feed(self, data: bytes) -> list[Frame | Corrupt]:
        self._buf += data
        return self._decode(final=False)

    def finish(self) -> list[Frame | Corrupt]:
        events = self._decode(final=True)
        end = self._base + len(self._buf)
        if self._bad_from is not None:
            events.append(Corrupt(self._bad_from, end, at_end=True))
        self._buf.clear()
        self._base, self._bad_from = end, None
        return events

    def _decode(self, final: bool) -> list[Frame | Corrupt]:
        events: list[Frame | Corrupt] = []
        pos = 0
        while pos < len(self._buf):
            found = self._frame_at(pos, final)
            if found is _Need.MORE:
                break
            if isinstance(found, Frame):
                if self._bad_from is not None:
                    events.append(Corrupt(self._bad_from, found.offset, at_end=False))
                    self._bad_from = None
                events.append(found)
                pos = found.end - self._base
                continue
            if self._bad_from is None:
                self._bad_from = self._base + pos
            nxt = self._buf.find(FRAME_MAGIC, pos + 1)
            if nxt < 0:
                # Keep the last bytes: a magic may straddle the next feed.
                pos = len(self._buf) if final else max(pos + 1, len(self._buf) - 3)
                break
            pos = nxt
        del self._buf[:pos]
        self._base += pos
        return events

    def _frame_at(self, pos: int, final: bool) -> Frame | _Need:
        avail = len(self._buf) - pos
        if avail < FRAME_OVERHEAD:
            return _Need.BAD if final else _Need.MORE
        magic, length, time_us, crc = FRAME_HEAD.unpack_from(self._buf, pos)
        if magic != FRAME_MAGIC or length > self._max_payload:
            return _Need.BAD
        if avail < FRAME_OVERHEAD + length:
            return _Need.BAD if final else _Need.MORE
        view = memoryview(self._buf)
        try:
            start, end = pos + FRAME_OVERHEAD, pos + FRAME_OVERHEAD + length
            if zlib.crc32(view[start:end], zlib.crc32(view[pos + 4 : pos + 16])) != crc:
                return _Need.BAD
            payload = bytes(view[start:end])
        finally:
            view.release()
        return Frame(self._base + pos, self._base + end, time_us, payload)


def decode_frames(data: bytes, base_offset: int = 0) -> list[Frame | Corrupt]:
    """Every frame and corrupt range in `data`, which ends where the file ends."""
    decoder = FrameDecoder(base_offset)
    return decoder.feed(data) + decoder.finish()


# --- files ----------------------------------------------------------------------------


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if someone holds it or it is gone.

    The lock is taken without waiting. Afterwards the path must still name the
    locked inode: a segment unlinked by its shipper between our open and our
    lock is not ours to ship again.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(errno.ENOENT, "replaced", str(path))
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(directory: Path, fsync: Fsync = os.fsync) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Verdict(enum.Enum):
    EMPTY = "empty"
    BAD_HEADER = "bad_header"
    RECORDS = "records"
    NO_RECORDS = "no_records"


@dataclass(frozen=True)
class FileRecovery:
    """What `recover_file` found in one segment file and did about it."""

    verdict: Verdict
    header: SegmentHeader | None
    frames: list[Frame]
    size: int  # bytes left in the file (0 once it is deleted or quarantined)
    quarantined_bytes: int  # newly copied or moved to quarantine by this call
    torn_tail_bytes: int
    corrupt_ranges: int


def recover_file(fd: int, path: Path, quarantine: Path, fsync: Fsync = os.fsync) -> FileRecovery:
    """Apply the decision table to the locked segment `fd` at `path`."""
    data = read_all(fd)
    if not data:
        os.unlink(path)
        return FileRecovery(Verdict.EMPTY, None, [], 0, 0, 0, 0)
    try:
        header = decode_header(data)
    except BadHeader:
        os.rename(path, quarantine / f"{path.name}.bad")
        return FileRecovery(Verdict.BAD_HEADER, None, [], 0, len(data), 0, 0)
    frames: list[Frame] = []
    quarantined = torn = ranges = 0
    size = len(data)
    for event in decode_frames(data[HEADER_SIZE:], HEADER_SIZE):
        if isinstance(event, Frame):
            frames.append(event)
            continue
        ranges += 1
        quarantined += _quarantine_range(data, event, path, quarantine, fsync)
        if event.at_end:
            os.ftruncate(fd, event.offset)
            fsync(fd)
            torn, size = event.end - event.offset, event.offset
    if not frames:
        os.unlink(path)
        return FileRecovery(Verdict.NO_RECORDS, header, [], 0, quarantined, torn, ranges)
    return FileRecovery(Verdict.RECORDS, header, frames, size, quarantined, torn, ranges)


def _quarantine_range(data: bytes, bad: Corrupt, path: Path, quarantine: Path, fsync: Fsync) -> int:
    """Copy the bad bytes once; a second pass over the same segment finds the copy and skips."""
    target = quarantine / f"{segment_stem_of(path)}.{bad.offset}-{bad.end}.bad"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return 0
    try:
        os.write(fd, data[bad.offset : bad.end])
        fsync(fd)
    finally:
        os.close(fd)
    return bad.end - bad.offset


def segment_stem_of(path: Path) -> str:
    """The segment's name without `.open` / `.seg`: stable across sealing."""
    return path.name.split(".", 1)[0]


# --- a directory of leftovers ---------------------------------------------------------


@dataclass
class RecoveryReport:
    """What a pass over the spool directory found, for one log line at start-up."""

    segments: int = 0  # sealed segments ready to ship after the pass
    records: int = 0
    bytes: int = 0
    adopted: int = 0  # dead writers' open segments recovered and sealed
    busy: int = 0  # held by a live writer or shipper: left alone
    torn_tails: int = 0
    corrupt_ranges: int = 0
    quarantined_bytes: int = 0
    quarantined_files: int = 0
    deleted_empty: int = 0

    def as_log_fields(self) -> dict[str, int]:
        return {
            "segments": self.segments,
            "records": self.records,
            "bytes": self.bytes,
            "adoptedSegments": self.adopted,
            "busySegments": self.busy,
            "tornTails": self.torn_tails,
            "corruptRanges": self.corrupt_ranges,
            "quarantinedBytes": self.quarantined_bytes,
            "quarantinedFiles": self.quarantined_files,
            "deletedEmpty": self.deleted_empty,
        }

    def add(self, rec: FileRecovery) -> None:
        self.torn_tails += rec.torn_tail_bytes > 0
        self.corrupt_ranges += rec.corrupt_ranges
        self.quarantined_bytes += rec.quarantined_bytes
        self.quarantined_files += rec.verdict is Verdict.BAD_HEADER
        self.deleted_empty += rec.verdict in (Verdict.EMPTY, Verdict.NO_RECORDS)
        if rec.verdict is Verdict.RECORDS:
            self.segments += 1
            self.records += len(rec.frames)
            self.bytes += rec.size


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """A segment file as the spool's size and age accounting sees it."""

    stem: str
    size: int
    created_us: int | None  # from its header: when its first record was appended
    sealed: bool


OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".seg"


def recover_directory(
    directory: Path,
    quarantine: Path,
    *,
    skip: frozenset[str] = frozenset(),
    verify_sealed: bool,
    fsync: Fsync = os.fsync,
) -> tuple[RecoveryReport, list[SegmentSummary]]:
    """Adopt every dead writer's open segment (recover, then seal it) and summarise the rest.

    An open segment whose flock is free belongs to a dead writer: the kernel
    dropped the lock with the process. `skip` names this process's own unsealed
    segments. With `verify_sealed`, sealed segments are recovered too (at
    start-up, for the report); otherwise they are only summarised.
    """
    report = RecoveryReport()
    summaries: list[SegmentSummary] = []
    for path in _segment_paths(directory):
        stem = segment_stem_of(path)
        if stem in skip:
            continue
        sealed = path.suffix == SEALED_SUFFIX
        wanted = verify_sealed or not sealed
        fd = try_lock(path) if wanted else None
        if fd is None:
            summary = _summarise(path, sealed)
            if summary is not None:
                summaries.append(summary)
                report.busy += wanted  # a live writer's, or another shipper's
            continue
        try:
            rec = recover_file(fd, path, quarantine, fsync)
            if rec.verdict is Verdict.RECORDS and not sealed:
                _seal_adopted(fd, path, fsync)
                report.adopted += 1
        finally:
            os.close(fd)
        report.add(rec)
        if rec.verdict is Verdict.RECORDS:
            created = rec.header.created_us if rec.header else None
            summaries.append(SegmentSummary(stem, rec.size, created, sealed=True))
    return report, summaries


def _segment_paths(directory: Path) -> Iterator[Path]:
    for name in sorted(os.listdir(directory)):
        if name.endswith((OPEN_SUFFIX, SEALED_SUFFIX)):
            yield directory / name


def _seal_adopted(fd: int, path: Path, fsync: Fsync) -> None:
    fsync(fd)
    os.rename(path, path.with_suffix(SEALED_SUFFIX))
    fsync_dir(path.parent, fsync)


def _summarise(path: Path, sealed: bool) -> SegmentSummary | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        try:
            created: int | None = decode_header(os.pread(fd, HEADER_SIZE, 0)).created_us
        except BadHeader:
            created = None  # still being created, or damaged: recovery will tell
        return SegmentSummary(segment_stem_of(path), size, created, sealed)
    finally:
        os.close(fd)
