"""The shipper: sealed spool segments become S3 objects, and only then are deleted.

One job: move what the spool holds to the object sink, at least once.

Invariants:
- A segment is deleted only after the sink confirmed every object made from it.
  A crash in between ships it again: delivery is at least once.
- Object keys are a pure function of the segment: the batch object is keyed by
  the segment's name (the batch id), a per-request object by its `requestId`
  *and* its place in the segment. Never by client input alone: a `requestId`
  may come from the client's `x-request-id`, and two clients sending the same
  one must not overwrite each other's record. Gzip bodies carry no timestamp:
  a retried upload overwrites the same key with the same bytes, it never adds
  an object.
- A failed put is retried with exponential backoff and full jitter, capped, for
  as long as the process lives; nothing is ever given up. Each failed attempt
  is one log line (warning; error when the failure will not heal by itself,
  e.g. NoSuchBucket or AccessDenied). Logs carry keys, counts and error codes,
  never record contents.
- With a digester (`on_shipped`), a segment's digest entries (key, SHA-256,
  record count, seq ranges) are journaled and fsynced after S3 confirmed its
  objects and before the segment is deleted; if that fails, the segment stays.
- Segments go oldest first, at most `max_concurrent_uploads` at a time; each is
  held under the spool's lease (flock), so no two shippers, in this process or
  another, ship the same segment at once.

Object layout (DESIGN.md, wire contract 2):
- batch: `<prefix>/YYYY/MM/DD/<batch id>.ndjson.gz`, the date (UTC) of the
  segment's first record, gzip'd NDJSON (one record per `\\n`-terminated line),
  Content-Type application/x-ndjson, no Content-Encoding (the gzip is the object).
- per request: `<prefix>/YYYY/MM/DD/<requestId>.<batch id>-<index>.json`, the
  date from the record's `timestamp`, the record as spooled, Content-Type
  application/json (DESIGN's `<requestId>.json`, made unique by the sidecar's
  own batch id and the record's index in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from .backoff import exponential
from .integrity.digest import ObjectEntry, object_entry
from .s3_sink import ObjectSink, SinkError, classify
from .spool import SegmentContents, SegmentLease, Spool, SpoolError
from .spool.recovery import Frame

log = logging.getLogger(__name__)

NDJSON_CONTENT_TYPE = "application/x-ndjson"
JSON_CONTENT_TYPE = "application/json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TIMESTAMP_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- objects (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class AuditObject:
    key: str
    body: bytes
    content_type: str
    records: int


def build_objects(prefix: str, contents: SegmentContents, per_request: bool) -> list[AuditObject]:
    if per_request:
        return [
            request_object(prefix, contents.stem, index, frame)
            for index, frame in enumerate(contents.records)
        ]
    return [batch_object(prefix, contents)]


def objects_and_entries(
    prefix: str, contents: SegmentContents, per_request: bool
) -> tuple[list[AuditObject], list[ObjectEntry]]:
    """The segment's objects and, for the digest, each one's key, SHA-256, count and seqs."""
    objects = build_objects(prefix, contents, per_request)
    if per_request:
        payloads = [[frame.payload] for frame in contents.records]
    else:
        payloads = [[frame.payload for frame in contents.records]]
    entries = [object_entry(o.key, o.body, p) for o, p in zip(objects, payloads, strict=True)]
    return objects, entries


def batch_object(prefix: str, contents: SegmentContents) -> AuditObject:
    lines = b"".join(frame.payload + b"\n" for frame in contents.records)
    body = gzip.compress(lines, compresslevel=6, mtime=0)
    day = day_of_us(contents.records[0].time_us)
    key = _key(prefix, day, f"{contents.stem}.ndjson.gz")
    return AuditObject(key, body, NDJSON_CONTENT_TYPE, len(contents.records))


def request_object(prefix: str, stem: str, index: int, frame: Frame) -> AuditObject:
    """`<requestId>.<batch id>-<index>.json` under the record's own date; a record without
    a usable id or timestamp (never written by the proxy) ships as `<batch id>-<index>.json`."""
    request_id, day = _identity(frame.payload)
    if request_id is None or day is None:
        log.warning(
            "audit record without a usable requestId/timestamp; shipped under its batch id",
            extra={"segment": stem, "index": index},
        )
        name = f"{stem}-{index:06d}.json"
        day = day or day_of_us(frame.time_us)
    else:
        name = f"{request_id}.{stem}-{index:06d}.json"
    return AuditObject(_key(prefix, day, name), frame.payload, JSON_CONTENT_TYPE, 1)


def day_of_us(time_us: int) -> str:
    return f"{_EPOCH + timedelta(microseconds=time_us):%Y/%m/%d}"


def _identity(payload: bytes) -> tuple[str | None, str | None]:
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    request_id, timestamp = record.get("requestId"), record.get("timestamp")
    valid_id = (
        request_id if isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id) else None
    )
    match = _TIMESTAMP_DAY.match(timestamp) if isinstance(timestamp, str) else None
    return valid_id, "/".join(match.groups()) if match else None


def _key(prefix: str, day: str, name: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{day}/{name}" if prefix else f"{day}/{name}"


# --- shipping -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShipperStats:
    records_shipped: int
    bytes_shipped: int  # object bytes S3 confirmed
    objects_put: int
    put_errors: int  # failed attempts
    segments_shipped: int
    uploads_in_flight: int


class Shipper:
    """Ships the spool's sealed segments in the background; `drain` ships what is left."""

    def __init__(
        self,
        spool: Spool,
        sink: ObjectSink,
        *,
        prefix: str,
        per_request_objects: bool = False,
        max_concurrent_uploads: int = 4,
        on_put: Callable[[float, bool], None] | None = None,
        on_shipped: Callable[[list[ObjectEntry]], Awaitable[None]] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rescan_interval_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._spool = spool
        self._sink = sink
        self._prefix = prefix
        self._per_request = per_request_objects
        self._max_uploads = max(1, max_concurrent_uploads)
        self._on_put = on_put
        self._on_shipped = on_shipped
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._rescan_interval_s = rescan_interval_s
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._draining = False
        self._records_shipped = 0
        self._bytes_shipped = 0
        self._objects_put = 0
        self._put_errors = 0
        self._segments_shipped = 0
        self._in_flight = 0

    def stats(self) -> ShipperStats:
        return ShipperStats(
            records_shipped=self._records_shipped,
            bytes_shipped=self._bytes_shipped,
            objects_put=self._objects_put,
            put_errors=self._put_errors,
            segments_shipped=self._segments_shipped,
            uploads_in_flight=self._in_flight,
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-shipper")

    async def stop(self) -> None:
        """Cancel shipping; segments in flight are released and stay on disk."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, deadline: float) -> int:
        """Seal the active segment, ship until nothing is left or `deadline` (time.monotonic()).

        Returns how many segments stay on disk for the next process.
        """
        with contextlib.suppress(SpoolError):  # a failed spool keeps its open segment on disk
            await self._spool.seal_active()
        self._draining = True
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="audit-shipper")
        try:
            await asyncio.wait_for(
                asyncio.shield(self._task), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            pass
        except Exception:
            log.exception("audit shipper stopped with an error while draining")
        await self.stop()
        left = self._spool.stats().segments
        log.info(
            "audit spool drained" if left == 0 else "audit spool drain ran out of time",
            extra={"segmentsLeft": left, **self._log_counts()},
        )
        return left

    async def ship_once(self) -> int:
        """One pass, one attempt per object, oldest segment first; returns segments shipped."""
        shipped = 0
        for stem in await self._spool.pending():
            lease = await self._spool.lease(stem)
            if lease is None:
                continue
            with contextlib.suppress(SinkError):
                await self._ship_leased(lease, attempts=1)
                shipped += 1
        return shipped

    # --- the loop -----------------------------------------------------------------

    async def _run(self) -> None:
        tasks: dict[str, asyncio.Task[bool]] = {}
        not_ours: set[str] = set()  # leased by another shipper: skipped until the rescan timer
        backlog: list[str] = []
        relist = True
        try:
            while True:
                listed = relist
                if relist:
                    self._spool.sealed.clear()
                    self._wake.clear()
                    stems = await self._pending()
                    backlog = [s for s in stems if s not in not_ours and s not in tasks]
                    relist = False
                while backlog and len(tasks) < self._max_uploads:
                    stem = backlog.pop(0)
                    tasks[stem] = asyncio.create_task(self._ship_forever(stem))
                if self._draining and listed and not backlog and not tasks:
                    return
                woke = await self._wait(set(tasks.values()))
                for stem, task in list(tasks.items()):
                    if task.done():
                        del tasks[stem]
                        if self._reap(stem, task):
                            not_ours.add(stem)
                if woke == "timer":
                    not_ours.clear()
                relist = woke != "task" or not backlog
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _reap(self, stem: str, task: asyncio.Task[bool]) -> bool:
        """True when the segment turned out to be another shipper's."""
        exc = task.exception()
        if exc is not None:
            log.error(
                "audit segment shipping stopped unexpectedly",
                extra={"segment": stem, "error": repr(exc)},
            )
            return False
        return not task.result()

    async def _pending(self) -> list[str]:
        """The spool's pending segments; an error here must not end shipping (next pass retries)."""
        try:
            return await self._spool.pending()
        except Exception as exc:
            log.error("audit spool directory pass failed", extra={"error": repr(exc)})
            return []

    async def _wait(self, tasks: set[asyncio.Task[bool]]) -> str:
        """Until a seal or drain ("signal"), a finished segment ("task"), or the rescan timer."""
        waiters = {
            asyncio.create_task(self._spool.sealed.wait()),
            asyncio.create_task(self._wake.wait()),
        }
        try:
            done, _ = await asyncio.wait(
                tasks | waiters,
                timeout=self._rescan_interval_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not done:
            return "timer"
        return "signal" if done & waiters else "task"

    async def _ship_forever(self, stem: str) -> bool:
        """Ship one segment, however long it takes; False if another shipper holds it."""
        attempt = 0
        while True:
            lease = await self._spool.lease(stem)
            if lease is None:
                return False
            try:
                await self._ship_leased(lease, attempts=None)
                return True
            except Exception as exc:  # reading it or journaling its digest entries failed: the disk
                attempt += 1
                log.error(
                    "audit segment could not be read or journaled for shipping",
                    extra={"segment": stem, "attempt": attempt, "error": repr(exc)},
                )
            await asyncio.sleep(self._backoff(attempt))

    async def _ship_leased(self, lease: SegmentLease, attempts: int | None) -> None:
        try:
            contents = await self._spool.read(lease)
            if contents is None:  # nothing valid was left in it; recovery removed it
                self._spool.release(lease)
                return
            objects, entries = await asyncio.to_thread(
                objects_and_entries, self._prefix, contents, self._per_request
            )
            for obj in objects:
                await self._put(obj, lease.stem, attempts)
            if self._on_shipped is not None:
                # The digest's facts are durable before the segment goes (integrity/digester.py).
                await self._on_shipped(entries)
        except BaseException:
            self._spool.release(lease)
            raise
        self._spool.shipped(lease)
        self._segments_shipped += 1
        self._records_shipped += len(contents.records)
        log.debug(
            "audit segment shipped",
            extra={
                "segment": lease.stem,
                "records": len(contents.records),
                "objects": len(objects),
            },
        )

    async def _put(self, obj: AuditObject, stem: str, attempts: int | None) -> None:
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            self._in_flight += 1
            try:
                await self._sink.put(obj.key, obj.body, obj.content_type)
            except Exception as exc:
                error = classify(exc)
                self._observe(started, ok=False)
                delay = self._backoff(attempt)
                self._log_failure(obj, stem, attempt, error, delay)
                if attempts is not None and attempt >= attempts:
                    raise error from exc
                await asyncio.sleep(delay)
                continue
            finally:
                self._in_flight -= 1
            self._observe(started, ok=True)
            self._objects_put += 1
            self._bytes_shipped += len(obj.body)
            return

    def _observe(self, started: float, ok: bool) -> None:
        if not ok:
            self._put_errors += 1
        if self._on_put is not None:
            self._on_put(time.monotonic() - started, ok)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1)))."""
        ceiling = exponential(attempt, self._backoff_base_s, self._backoff_cap_s)
        return self._rng.uniform(0.0, ceiling)

    def _log_failure(
        self, obj: AuditObject, stem: str, attempt: int, error: SinkError, delay: float
    ) -> None:
        level = logging.WARNING if error.retryable else logging.ERROR
        log.log(
            level,
            "audit upload failed; will retry",
            extra={
                "objectKey": obj.key,
                "segment": stem,
                "attempt": attempt,
                "retryable": error.retryable,
                "errorCode": error.code,
                "error": str(error),
                "retryInSeconds": round(delay, 3),
            },
        )

    def _log_counts(self) -> dict[str, int]:
        stats = self.stats()
        return {
            "recordsShipped": stats.records_shipped,
            "objectsPut": stats.objects_put,
            "putErrors": stats.put_errors,
        }
