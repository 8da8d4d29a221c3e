"""The digester: every `AUDIT_DIGEST_INTERVAL_S` and at shutdown, the writer's next digest to S3.

One job: turn the journal's pending facts (objects shipped, seqs tombstoned)
into the next link of this writer's chain, signed when a key is configured.

Order, so nothing is lost or forked by a crash:
1. build the digest from the journal state (head, pending objects and
   tombstones), sign it, journal it as "prepared" and fsync;
2. put it to S3 (`<prefix>-digest/...`, see digest.py);
3. journal "confirmed" (the new chain head) and compact.
A crash after 1 puts the same bytes again at the same key; a failed put is
retried every `retry_s` (never a new digest before the prepared one is in S3,
so the chain never forks). Digests are written even when nothing was shipped:
an empty digest is the writer's heartbeat, so a chain that stops is visible.

`note_shipped` is the shipper's hook: it journals a segment's objects and
fsyncs before the shipper deletes the segment. `note_dropped` journals a
tombstone for a seq whose record the spool did not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..s3_sink import ObjectSink, classify
from ..spool.writers import WriterSlot
from .digest import Tombstone, canonical, digest_body, digest_key, envelope
from .journal import DigestJournal, JournalError, Prepared
from .signing import Signer

log = logging.getLogger(__name__)

DIGEST_CONTENT_TYPE = "application/json"


class Digester:
    def __init__(
        self,
        journal: DigestJournal,
        slot: WriterSlot,
        sink: ObjectSink,
        signer: Signer | None,
        *,
        bucket: str,
        prefix: str,
        interval_s: float,
        retry_s: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._slot = slot
        self._sink = sink
        self._signer = signer
        self._bucket = bucket
        self._prefix = prefix
        self._interval_s = interval_s
        self._retry_s = min(retry_s, interval_s)
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.digests_written = 0
        self.digest_failures = 0
        self.tombstone_failures = 0
        self._unjournaled: list[Tombstone] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-digester")

    async def _run(self) -> None:
        while True:
            ok = await self.write_once()
            await asyncio.sleep(self._interval_s if ok else self._retry_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- hooks --------------------------------------------------------------------

    async def note_shipped(self, entries: list[Any]) -> None:
        """Journal a segment's objects and fsync; raises JournalError (the segment stays)."""
        self._journal.add_objects(entries)
        try:
            await asyncio.to_thread(self._journal.syncer())
        except OSError as exc:
            raise JournalError(f"digest journal fsync failed: {exc}") from exc

    def note_dropped(self, seq: int, reason: str) -> None:
        """Journal a tombstone (one pwrite; durable with the next fsync). Never raises."""
        stone = Tombstone(self._slot.writer_id, seq, seq, reason)
        try:
            for earlier in self._unjournaled:
                self._journal.add_tombstone(earlier)
            self._unjournaled.clear()
            self._journal.add_tombstone(stone)
        except JournalError as exc:
            # Kept in memory and tried again with the next drop or digest.
            self._unjournaled.append(stone)
            self.tombstone_failures += 1
            log.error("audit tombstone not journaled yet", extra={"seq": seq, "error": str(exc)})

    # --- digests ------------------------------------------------------------------

    async def write_once(self) -> bool:
        """Put the prepared digest, or prepare and put the next; True when S3 has it."""
        async with self._lock:
            try:
                if self._journal.state.prepared is None:
                    await self._prepare()
                prepared = self._journal.state.prepared
                assert prepared is not None
                await self._sink.put(prepared.key, prepared.data, DIGEST_CONTENT_TYPE)
                finish = self._journal.confirm()
                await asyncio.to_thread(finish)
            except Exception as exc:
                error = classify(exc)
                self.digest_failures += 1
                log.warning(
                    "audit digest not written; will retry",
                    extra={"errorCode": error.code, "error": str(error)},
                )
                return False
            self.digests_written += 1
            log.info(
                "audit digest written",
                extra={"digestKey": prepared.key, "digestSeq": prepared.digest_seq},
            )
            return True

    async def _prepare(self) -> None:
        for earlier in self._unjournaled:
            self._journal.add_tombstone(earlier)
        self._unjournaled.clear()
        state = self._journal.state
        digest_seq = 0 if state.head is None else state.head.digest_seq + 1
        created = datetime.fromtimestamp(self._wall_clock(), UTC)
        body = digest_body(
            writer_id=self._slot.writer_id,
            digest_seq=digest_seq,
            created=created,
            bucket=self._bucket,
            prefix=self._prefix,
            previous=state.head,
            seq_next=self._slot.next_seq,
            objects=list(state.objects.values()),
            tombstones=list(state.tombstones),
        )
        signature = None if self._signer is None else await self._signer.sign(canonical(body))
        key = digest_key(self._prefix, self._slot.writer_id, digest_seq, created)
        self._journal.prepare(Prepared(digest_seq, key, envelope(body, signature)))
        await asyncio.to_thread(self._journal.syncer())

    async def close(self, deadline: float) -> None:
        """Stop the timer and write a last digest within `deadline` (time.monotonic())."""
        await self.stop()
        budget = max(0.1, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self.write_once(), budget)
        except TimeoutError:
            log.warning("audit digest at shutdown ran out of time; the next process writes it")
