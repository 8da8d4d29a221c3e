"""The on-disk audit spool: a record is accepted once its frame is in a segment file.

One job: keep every accepted record on local disk until the shipper has put it
in S3, across process kills and restarts. SPOOL.md is the full spec; the byte
format and the recovery decision table live in `spool/recovery.py`.

Durability points (the words are API):
- `append(payload, record_time)` returns: the frame was written to the active
  segment with os.write (pwrite). It is in the page cache and survives a
  SIGKILL of this process. This is when a record counts as accepted.
- `await sync()` returns (or the group commit covering the record completes, at
  most `fsync_interval_s` after append): the segment was fsynced, and on its
  first sync so was the directory. The record survives a host crash.
- `await seal_active()` returns (or a size/count/age seal completes): the
  segment was fsynced, renamed `.open` -> `.seg`, and the directory fsynced.

Invariants:
- `append` runs on the event loop and never waits for a disk flush: it is one
  pwrite (plus, once per segment, an open and a header write). Every fsync
  runs on one dedicated thread, in submission order, so a sync submitted after
  a seal completes after it.
- One active segment per Spool. The writer holds an exclusive flock on it for
  its whole life; the kernel drops the lock when the process dies, which is how
  anyone tells a dead writer's `.open` segment from a live one.
- A record frame is written whole or not at all: after a failed or short
  write the file is truncated back to the end of the last good frame. If even
  that fails, the spool fails.
- An fsync error is fatal: `failed` is set, every later `append` raises
  `SpoolFailed`, and the segments stay on disk for the next process to recover.
- A segment is deleted only by `shipped()`, i.e. after S3 confirmed it.

Segment life: created on the first append after the previous one was sealed,
named `<created UTC %Y%m%dT%H%M%S%fZ>-<writer id>-<sequence>.open`; sealed when
it holds `segment_max_records` records, when the next record would take its
NDJSON size past `segment_max_bytes`, or `segment_max_age_s` after its first
record (checked every fsync interval). The name without suffix is the batch id.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from .recovery import (
    HEADER_SIZE,
    MAX_PAYLOAD_BYTES,
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    Frame,
    Fsync,
    RecoveryReport,
    SegmentHeader,
    SegmentSummary,
    Verdict,
    encode_frame,
    encode_header,
    fsync_dir,
    recover_directory,
    recover_file,
    try_lock,
)

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpoolError(Exception):
    """The spool did not accept the record."""


class SpoolFull(SpoolError):
    """No room: `max_bytes` would be exceeded, or the disk itself is full (ENOSPC)."""


class SpoolFailed(SpoolError):
    """An fsync (or a repair after a failed write) failed; nothing is accepted until restart."""


@dataclass(frozen=True)
class SpoolStats:
    """Counters and gauges at one moment, read by the app at scrape time."""

    records_appended: int
    bytes_appended: int  # frame bytes written by append
    refused_full: int  # appends refused with SpoolFull
    write_errors: int  # appends that hit an OSError (ENOSPC, EIO, ...)
    bytes_on_disk: int  # segment bytes in the directory, not yet shipped
    segments: int
    oldest_unshipped_age_s: float | None  # since the oldest unshipped segment's first append
    fsyncs: int
    fsync_failures: int
    segments_sealed: int
    quarantined_bytes: int
    failed: str | None


@dataclass(frozen=True)
class UnsealedSegment:
    """One of this spool's segments not sealed yet: how much of it a host crash would keep."""

    path: Path
    size: int
    synced_size: int


@dataclass(frozen=True)
class SegmentContents:
    """The records of one sealed segment, read under its lease."""

    stem: str
    header: SegmentHeader
    records: list[Frame]


@dataclass
class SegmentLease:
    """An exclusive flock on one sealed segment, held while it is being shipped."""

    stem: str
    path: Path
    fd: int


def segment_stem(header: SegmentHeader) -> str:
    created = _EPOCH + timedelta(microseconds=header.created_us)
    return f"{created:%Y%m%dT%H%M%S%f}Z-{header.writer_id}-{header.sequence:010d}"


class _Writer:
    """One of our segments: an fd holding our flock. `synced_size` is written by the sync thread."""

    def __init__(self, path: Path, fd: int, stem: str, created_us: int) -> None:
        self.path = path
        self.fd = fd
        self.stem = stem
        self.created_us = created_us
        self.size = HEADER_SIZE
        self.synced_size = 0
        self.records = 0
        self.ndjson_bytes = 0
        self.started = time.monotonic()
        self.dir_synced = False
        self.closed = False


class _Ledger:
    """Size and creation time (= first append) of every unshipped segment in the directory."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int | None]] = {}
        self.total = 0

    def put(self, stem: str, size: int, created_us: int | None) -> None:
        old = self._entries.get(stem)
        self.total += size - (old[0] if old else 0)
        self._entries[stem] = (size, created_us)

    def get(self, stem: str) -> tuple[int, int | None] | None:
        return self._entries.get(stem)

    def drop(self, stem: str) -> None:
        old = self._entries.pop(stem, None)
        if old:
            self.total -= old[0]

    def replace(self, entries: dict[str, tuple[int, int | None]]) -> None:
        self._entries = entries
        self.total = sum(size for size, _ in entries.values())

    def oldest_us(self) -> int | None:
        times = [t for _, t in self._entries.values() if t is not None]
        return min(times) if times else None

    def __len__(self) -> int:
        return len(self._entries)


class Spool:
    """Append-only segment files in one directory; see the module docstring for the contract."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_records: int = 1000,
        segment_max_bytes: int = 8 * 1024 * 1024,
        segment_max_age_s: float = 5.0,
        fsync_interval_s: float = 0.05,
        max_bytes: int = 1024 * 1024 * 1024,
        writer_id: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        fsync: Fsync = os.fsync,
        sync_also: Callable[[], None] | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._quarantine = self._dir / QUARANTINE_DIR
        self._segment_max_records = segment_max_records
        self._segment_max_bytes = segment_max_bytes
        self._segment_max_age_s = segment_max_age_s
        self._fsync_interval_s = fsync_interval_s
        self._max_bytes = max_bytes
        self._writer_id = writer_id or secrets.token_hex(8)
        self._wall_clock = wall_clock
        self._fsync = fsync  # the seam tests use to inject fsync failures
        # Run on the sync thread after every segment fsync: the writer slot's seq
        # counter (spool/writers.py) reaches the disk no later than the records carrying them.
        self._sync_also = sync_also
        self._next_sequence = 0
        self._active: _Writer | None = None
        self._unsealed: dict[str, _Writer] = {}
        self._ledger = _Ledger()
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: set[asyncio.Future[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._sync_inflight = False
        self._pass_lock = asyncio.Lock()
        self._deleted_during_pass: set[str] = set()
        self._failed: str | None = None
        self._full = False
        self.sealed = asyncio.Event()  # set whenever a segment is sealed; the shipper clears it
        # counters; the fsync ones are written only by the sync thread
        self._records_appended = 0
        self._bytes_appended = 0
        self._refused_full = 0
        self._write_errors = 0
        self._fsyncs = 0
        self._fsync_failures = 0
        self._segments_sealed = 0
        self._quarantined_bytes = 0

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> RecoveryReport:
        """Recover every dead writer's leftovers, then start the group-commit ticker."""
        self._quarantine.mkdir(parents=True, exist_ok=True)
        report, summaries = await asyncio.to_thread(
            recover_directory, self._dir, self._quarantine, verify_sealed=True, fsync=self._fsync
        )
        self._ledger.replace({s.stem: (s.size, s.created_us) for s in summaries})
        self._quarantined_bytes += report.quarantined_bytes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool-sync")
        self._ticker = asyncio.create_task(self._tick_forever(), name="spool-ticker")
        return report

    async def close(self) -> None:
        """Seal the active segment (unless failed), wait for the sync thread, release every lock."""
        if self._executor is None:
            return
        await self._stop_ticker()
        if self._failed is None:
            self._rotate()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=True)
        self._release_unsealed()

    async def abort(self) -> None:
        """Stop as a killed process would: no seal, no more syncs; `.open` segments stay behind."""
        if self._executor is None:
            return
        await self._stop_ticker()
        executor, self._executor = self._executor, None
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._release_unsealed()

    async def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    def _release_unsealed(self) -> None:
        for writer in self._unsealed.values():
            if not writer.closed:
                writer.closed = True
                os.close(writer.fd)
        self._active = None

    # --- the append path (event loop) -------------------------------------------------

    def append(self, payload: bytes, record_time: float) -> None:
        """Accept one record: `record_time` is its request start in seconds since the epoch (UTC).

        Returns once the frame is written (durable against SIGKILL); raises
        SpoolFull / SpoolFailed / SpoolError otherwise, and the record is not accepted.
        """
        if self._failed is not None:
            raise SpoolFailed(self._failed)
        if self._executor is None:
            raise SpoolError("spool is not open")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise SpoolError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        time_us = round(record_time * 1_000_000)
        frame = encode_frame(payload, time_us)
        writer = self._active
        if (
            writer is not None
            and writer.records
            and writer.ndjson_bytes + len(payload) + 1 > self._segment_max_bytes
        ):
            self._rotate()
            writer = None
        needed = len(frame) + (HEADER_SIZE if writer is None else 0)
        if self._ledger.total + needed > self._max_bytes:
            self._refused_full += 1
            self._full = True
            raise SpoolFull(f"spool holds {self._ledger.total} of {self._max_bytes} bytes")
        if writer is None:
            writer = self._start_segment()
        self._write_frame(writer, frame)
        writer.records += 1
        writer.ndjson_bytes += len(payload) + 1
        self._ledger.put(writer.stem, writer.size, writer.created_us)
        self._records_appended += 1
        self._bytes_appended += len(frame)
        if writer.records >= self._segment_max_records:
            self._rotate()

    def _start_segment(self) -> _Writer:
        for _ in range(3):
            header = SegmentHeader(
                self._writer_id, self._next_sequence, round(self._wall_clock() * 1_000_000)
            )
            self._next_sequence += 1
            stem = segment_stem(header)
            path = self._dir / f"{stem}{OPEN_SUFFIX}"
            writer = self._create_locked(path, stem, header.created_us)
            if writer is not None:
                break
        else:
            raise SpoolError("could not create a segment file nobody else holds")
        try:
            _pwrite_all(writer.fd, encode_header(header), 0)
        except OSError as exc:
            self._write_errors += 1
            os.close(writer.fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise self._write_error(exc) from exc
        self._active = writer
        self._unsealed[stem] = writer
        self._ledger.put(stem, writer.size, writer.created_us)
        return writer

    def _create_locked(self, path: Path, stem: str, created_us: int) -> _Writer | None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return None
        except OSError as exc:
            self._write_errors += 1
            raise self._write_error(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A recovery pass (ours on the spool thread, or a neighbour's) may have locked
            # the brand-new file between our open and our flock, found it empty, deleted it
            # and let go: the lock is then ours, but on an inode no name points to.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(errno.ENOENT, "deleted by a recovery pass", str(path))
        except (BlockingIOError, FileNotFoundError):
            # The pass holds it (it will delete it as empty) or already did: next number.
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            self._write_errors += 1
            raise self._write_error(exc) from exc
        return _Writer(path, fd, stem, created_us)

    def _write_frame(self, writer: _Writer, frame: bytes) -> None:
        try:
            _pwrite_all(writer.fd, frame, writer.size)
        except OSError as exc:
            self._write_errors += 1
            try:
                os.ftruncate(writer.fd, writer.size)
            except OSError as trunc_exc:
                reason = (
                    f"write failed ({exc.strerror}) and truncating it back failed too "
                    f"({trunc_exc.strerror})"
                )
                self._fail(reason)
                raise SpoolFailed(reason) from exc
            raise self._write_error(exc) from exc
        writer.size += len(frame)

    def _write_error(self, exc: OSError) -> SpoolError:
        if exc.errno in _DISK_FULL:
            self._full = True
            return SpoolFull(f"disk full: {exc.strerror}")
        return SpoolError(f"spool write failed: {exc.strerror}")

    # --- sync thread ------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        # The age limit is checked at least every `age_check` seconds, whatever the
        # fsync interval: a long group-commit interval must not hold a batch back.
        age_check = min(0.5, max(0.01, self._segment_max_age_s / 10))
        tick = min(self._fsync_interval_s, age_check)
        next_sync = time.monotonic() + self._fsync_interval_s
        while True:
            await asyncio.sleep(tick)
            writer = self._active
            if writer is None or self._failed is not None:
                continue
            now = time.monotonic()
            if now - writer.started >= self._segment_max_age_s:
                self._rotate()
            elif now >= next_sync - tick / 2:
                next_sync = now + self._fsync_interval_s
                if writer.size > writer.synced_size and not self._sync_inflight:
                    self._sync_inflight = True
                    self._start_sync(writer).add_done_callback(self._clear_inflight)

    def _clear_inflight(self, _: asyncio.Future[None]) -> None:
        self._sync_inflight = False

    def _submit(self, job: Callable[[], None]) -> asyncio.Future[None]:
        assert self._executor is not None
        future = asyncio.get_running_loop().run_in_executor(self._executor, job)
        self._jobs.add(future)
        future.add_done_callback(self._jobs.discard)
        return future

    def _start_sync(self, writer: _Writer) -> asyncio.Future[None]:
        future = self._submit(partial(self._sync_job, writer, writer.size))
        future.add_done_callback(partial(self._job_done, writer, "fsync"))
        return future

    def _rotate(self) -> asyncio.Future[None] | None:
        writer, self._active = self._active, None
        if writer is None:
            return None
        if not writer.records:  # its first write failed: nothing to seal
            self._discard(writer)
            return None
        future = self._submit(partial(self._seal_job, writer, writer.size))
        future.add_done_callback(partial(self._job_done, writer, "seal"))
        return future

    def _discard(self, writer: _Writer) -> None:
        writer.closed = True
        os.close(writer.fd)
        with contextlib.suppress(OSError):
            os.unlink(writer.path)
        del self._unsealed[writer.stem]
        self._ledger.drop(writer.stem)

    def _sync_job(self, writer: _Writer, size: int) -> None:
        self._counted_fsync(writer.fd)
        if self._sync_also is not None:
            self._sync_also()
        if not writer.dir_synced:
            fsync_dir(self._dir, self._counted_fsync)
            writer.dir_synced = True
        writer.synced_size = max(writer.synced_size, size)

    def _seal_job(self, writer: _Writer, size: int) -> None:
        self._counted_fsync(writer.fd)
        if self._sync_also is not None:
            self._sync_also()
        writer.synced_size = size
        os.rename(writer.path, writer.path.with_suffix(SEALED_SUFFIX))
        fsync_dir(self._dir, self._counted_fsync)
        writer.closed = True
        os.close(writer.fd)  # drops the flock: the segment is anyone's to ship now

    def _counted_fsync(self, fd: int) -> None:
        try:
            self._fsync(fd)
        except OSError:
            self._fsync_failures += 1
            raise
        self._fsyncs += 1

    def _job_done(self, writer: _Writer, what: str, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._fail(f"{what} of segment {writer.stem} failed: {exc}")
            return
        if what == "seal":
            del self._unsealed[writer.stem]
            self._segments_sealed += 1
            self.sealed.set()

    def _fail(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
            log.critical("audit spool failed", extra={"reason": reason, "spoolDir": str(self._dir)})

    # --- explicit durability ----------------------------------------------------------

    async def sync(self) -> None:
        """Return once every record appended before the call survives a host crash."""
        writer = self._usable_writer()
        await self._settle(self._start_sync(writer) if writer else self._submit(_nothing))

    async def seal_active(self) -> None:
        """Seal the active segment now (if it has records) and return once it is sealed."""
        self._usable_writer()
        await self._settle(self._rotate() or self._submit(_nothing))

    def _usable_writer(self) -> _Writer | None:
        if self._failed is not None:
            raise SpoolFailed(self._failed)
        if self._executor is None:
            raise SpoolError("spool is not open")
        return self._active

    async def _settle(self, future: asyncio.Future[None]) -> None:
        with contextlib.suppress(OSError):
            await future  # the single sync thread runs jobs in order: earlier ones are done too
        if self._failed is not None:
            raise SpoolFailed(self._failed)

    # --- state for the app ------------------------------------------------------------

    @property
    def failed(self) -> str | None:
        """Why the spool stopped accepting records for good (fsync failure), or None."""
        return self._failed

    @property
    def directory(self) -> Path:
        return self._dir

    def is_full(self) -> bool:
        """True from a refusal for lack of space until a shipped segment frees some."""
        return self._full or self._ledger.total >= self._max_bytes

    def stats(self) -> SpoolStats:
        oldest = self._ledger.oldest_us()
        age = None if oldest is None else max(0.0, self._wall_clock() - oldest / 1_000_000)
        return SpoolStats(
            records_appended=self._records_appended,
            bytes_appended=self._bytes_appended,
            refused_full=self._refused_full,
            write_errors=self._write_errors,
            bytes_on_disk=self._ledger.total,
            segments=len(self._ledger),
            oldest_unshipped_age_s=age,
            fsyncs=self._fsyncs,
            fsync_failures=self._fsync_failures,
            segments_sealed=self._segments_sealed,
            quarantined_bytes=self._quarantined_bytes,
            failed=self._failed,
        )

    def unsealed(self) -> list[UnsealedSegment]:
        """This spool's segments not sealed yet (the active one included)."""
        return [UnsealedSegment(w.path, w.size, w.synced_size) for w in self._unsealed.values()]

    # --- the shipper's side -----------------------------------------------------------

    async def pending(self) -> list[str]:
        """Stems of sealed segments ready to ship, oldest first.

        On the way, adopts every dead writer's open segment (recover, seal) and
        refreshes the size/age accounting from the directory, so segments other
        processes wrote or shipped are counted right.
        """
        async with self._pass_lock:
            own = frozenset(self._unsealed)
            self._deleted_during_pass.clear()
            report, summaries = await asyncio.to_thread(
                recover_directory,
                self._dir,
                self._quarantine,
                skip=own,
                verify_sealed=False,
                fsync=self._fsync,
            )
            self._quarantined_bytes += report.quarantined_bytes
            if report.adopted:
                log.warning("adopted open segments of a dead writer", extra=report.as_log_fields())
            self._absorb(summaries, own)
            return [s.stem for s in summaries if s.sealed]

    def _absorb(self, summaries: list[SegmentSummary], skipped: frozenset[str]) -> None:
        entries = {
            s.stem: (s.size, s.created_us)
            for s in summaries
            if s.stem not in self._deleted_during_pass
        }
        for stem in skipped | self._unsealed.keys():  # ours: not listed, kept current by append
            known = self._ledger.get(stem)
            if known is not None:
                entries[stem] = known
        before = self._ledger.total
        self._ledger.replace(entries)
        if self._ledger.total < before:
            self._full = False

    async def lease(self, stem: str) -> SegmentLease | None:
        """Exclusive hold on a sealed segment, or None if another shipper has it or it is gone."""
        path = self._dir / f"{stem}{SEALED_SUFFIX}"
        fd = await asyncio.to_thread(try_lock, path)
        return None if fd is None else SegmentLease(stem, path, fd)

    async def read(self, lease: SegmentLease) -> SegmentContents | None:
        """The segment's records (recovering it first if it is damaged); None if none are left."""
        rec = await asyncio.to_thread(
            recover_file, lease.fd, lease.path, self._quarantine, self._fsync
        )
        self._quarantined_bytes += rec.quarantined_bytes
        if rec.verdict is not Verdict.RECORDS or rec.header is None:
            self._forget(lease.stem)
            return None
        self._ledger.put(lease.stem, rec.size, rec.header.created_us)
        return SegmentContents(lease.stem, rec.header, rec.frames)

    def shipped(self, lease: SegmentLease) -> None:
        """S3 confirmed every object made from the segment: delete it, then drop the lease."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lease.path)
        finally:
            self.release(lease)
        self._forget(lease.stem)

    def release(self, lease: SegmentLease) -> None:
        """Give the segment back unshipped (it stays on disk for a later attempt)."""
        if lease.fd >= 0:
            os.close(lease.fd)
            lease.fd = -1

    def _forget(self, stem: str) -> None:
        self._ledger.drop(stem)
        if self._pass_lock.locked():  # a directory pass may have listed it before it went
            self._deleted_during_pass.add(stem)
        self._full = False


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


def _nothing() -> None:
    """A no-op sync-thread job: awaiting it waits for every job submitted before it."""
