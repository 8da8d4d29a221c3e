"""The audit trail: finished exchanges in, records durably spooled, shipped to S3 in the background.

It owns the spool, the S3 sink and the shipper for the app's lifetime, and
applies the spool-full policy:

- `reject` (default): while the spool cannot take a record (full, or failed),
  `refusal()` makes the proxy answer new requests 503 before they reach vLLM,
  so nothing unaudited is served. A request already in flight when the spool
  filled up is counted as dropped.
- `drop`: requests are served; each record the spool refuses is counted as
  dropped and logged.

Either way the condition is loud: a log line when it starts and ends, the
`llm_audit_records_dropped` / `llm_audit_requests_refused` metrics, and
`/health` detail.

Provability (issue #13): `accept` puts `writerId` and `seq` (spool/writers.py) first
in every record before encoding it — one seq per finished exchange, so a
dropped record leaves a tombstone for its seq in the digest journal (never a
silent gap) — and the digester (integrity/digester.py) chains signed digests of every
shipped object. If the record cannot be encoded, a minimal one (ids, identity,
status, sizes, hashes: scalars only) is written in its place; `accept` never
raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import errors
from .config import Config
from .health import AuditHealth
from .integrity.digester import Digester
from .integrity.journal import DIGESTS_DIR, DigestJournal
from .integrity.signing import FileSigner, KmsSigner, Signer
from .metrics import AuditSnapshot
from .proxy import Finished
from .record import encode_record, salvage
from .s3_sink import S3ObjectSink
from .shipper import Shipper
from .spool import Spool, SpoolError, SpoolFull
from .spool.writers import WriterSlot

log = logging.getLogger(__name__)

# Records per spool segment when each record becomes its own S3 object.
PER_REQUEST_SEGMENT_RECORDS = 1000


class AuditTrail:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        sink: S3ObjectSink,
        shipper: Shipper,
        on_fatal: Callable[[str], None],
        slot: WriterSlot,
        digester: Digester | None,
        signer: Signer | None,
    ) -> None:
        self._config = config
        self._spool = spool
        self._sink = sink
        self._shipper = shipper
        self._on_fatal = on_fatal
        self._slot = slot
        self._digester = digester
        self._signer = signer
        self._dropped = 0
        self._refused = 0
        self._full_since: float | None = None
        self._fatal_reported = False

    @classmethod
    async def open(
        cls,
        config: Config,
        on_put: Callable[[float, bool], None],
        on_fatal: Callable[[str], None],
    ) -> AuditTrail:
        per_request = config.batch_max_records == 1
        config.spool_dir.mkdir(parents=True, exist_ok=True)
        slot = WriterSlot.claim(config.spool_dir)
        spool = Spool(
            config.spool_dir,
            # Batch size 1 changes the S3 layout, not the spool: a segment per record
            # would cost a file and three fsyncs per request.
            segment_max_records=(
                PER_REQUEST_SEGMENT_RECORDS if per_request else config.batch_max_records
            ),
            segment_max_bytes=config.batch_max_bytes,
            segment_max_age_s=config.flush_interval,
            fsync_interval_s=config.fsync_interval_ms / 1000.0,
            max_bytes=config.spool_max_bytes,
            writer_id=slot.writer_id,
            sync_also=slot.sync,
        )
        report = await spool.open()
        log.info(
            "audit spool recovered",
            extra={
                "spoolDir": str(config.spool_dir),
                "writerId": slot.writer_id,
                "nextSeq": slot.next_seq,
                **report.as_log_fields(),
            },
        )
        sink = S3ObjectSink(config.audit_bucket, config.aws_region)
        await sink.__aenter__()
        signer = await _signer(config)
        digester = None
        if config.digest_interval > 0:
            journal = DigestJournal(config.spool_dir / DIGESTS_DIR, slot.writer_id)
            await asyncio.to_thread(journal.open)
            digester = Digester(
                journal,
                slot,
                sink,
                signer,
                bucket=config.audit_bucket,
                prefix=config.audit_prefix,
                interval_s=config.digest_interval,
            )
        shipper = Shipper(
            spool,
            sink,
            prefix=config.audit_prefix,
            per_request_objects=per_request,
            max_concurrent_uploads=config.max_concurrent_uploads,
            on_put=on_put,
            on_shipped=None if digester is None else digester.note_shipped,
        )
        shipper.start()
        if digester is not None:
            digester.start()
        return cls(config, spool, sink, shipper, on_fatal, slot, digester, signer)

    def refusal(self) -> errors.ProxyError | None:
        """Under the reject policy, the error to answer with while the spool cannot take records."""
        if self._config.spool_full_policy != "reject":
            return None
        reason = self._spool_unavailable()
        if reason is None:
            return None
        self._refused += 1
        return errors.audit_unavailable(reason)

    def _spool_unavailable(self) -> str | None:
        if self._spool.failed is not None:
            return "audit spool failed"
        if self._spool.is_full():
            return "audit spool full"
        return None

    def accept(self, done: Finished) -> None:
        """Sequence the exchange's record and append it to the spool; never raises.

        One record per request is enforced here: a record that cannot be
        encoded is replaced by a minimal one (record.salvage), never skipped.
        """
        try:
            seq: int | None = self._slot.assign()
        except OSError as exc:  # the slot file cannot be written: spool the record anyway
            seq = None
            log.error(
                "audit seq not recorded; record spooled without one",
                extra={"requestId": done.record.get("requestId"), "error": str(exc)},
            )
        try:
            payload = self._encode(done.record, seq)
            self._spool.append(payload, done.started_at)
        except SpoolFull as exc:
            self._drop(done, seq, f"spool full: {exc}")  # says why: the spool's limit or ENOSPC
            return
        except SpoolError as exc:
            self._drop(done, seq, f"spool error: {exc}")
            if self._spool.failed is not None and not self._fatal_reported:
                self._fatal_reported = True
                self._on_fatal(self._spool.failed)
            return
        except Exception as exc:  # even the minimal record failed: counted, never raised
            self._drop(done, seq, f"encoding failed: {type(exc).__name__}")
            return
        # A small record may fit while the spool still counts as full (a refusal stands
        # until shipping frees room): "accepts again" only once it really does.
        if self._full_since is not None and not self._spool.is_full():
            log.warning(
                "audit spool accepts records again",
                extra={
                    "fullForSeconds": round(time.monotonic() - self._full_since, 3),
                    "recordsDropped": self._dropped,
                },
            )
            self._full_since = None

    def _encode(self, record: dict[str, Any], seq: int | None) -> bytes:
        head = {"writerId": self._slot.writer_id, "seq": seq}
        try:
            return encode_record({**head, **record})
        except Exception as exc:  # e.g. a value orjson cannot encode: keep the minimal record
            log.error(
                "audit record could not be encoded; a minimal record is written instead",
                extra={"requestId": repr(record.get("requestId")), "error": type(exc).__name__},
            )
            minimal = salvage(record, f"encoding failed: {type(exc).__name__}")
            return encode_record({**head, **minimal})

    def _drop(self, done: Finished, seq: int | None, reason: str) -> None:
        if seq is not None and self._digester is not None:
            self._digester.note_dropped(seq, reason.split(":", 1)[0])
        self._dropped += 1
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.error(
                "audit record dropped: the spool cannot take records",
                extra={
                    "reason": reason,
                    "policy": self._config.spool_full_policy,
                    "requestId": done.record["requestId"],
                },
            )
        else:
            log.error(
                "audit record dropped",
                extra={"reason": reason, "requestId": done.record["requestId"]},
            )

    def health(self) -> AuditHealth:
        stats = self._spool.stats()
        return AuditHealth(
            failed=self._spool.failed,
            full=self._spool.is_full(),
            spool_bytes=stats.bytes_on_disk,
            oldest_unshipped_age_s=stats.oldest_unshipped_age_s,
            records_dropped=self._dropped,
        )

    def snapshot(self) -> AuditSnapshot:
        spool, shipped = self._spool.stats(), self._shipper.stats()
        return AuditSnapshot(
            records_spooled=spool.records_appended,
            records_shipped=shipped.records_shipped,
            records_dropped=self._dropped,
            requests_refused=self._refused,
            objects_put=shipped.objects_put,
            put_errors=shipped.put_errors,
            spool_bytes=spool.bytes_on_disk,
            spool_segments=spool.segments,
            oldest_unshipped_age_s=spool.oldest_unshipped_age_s,
            quarantined_bytes=spool.quarantined_bytes,
            spool_failed=self._spool.failed is not None,
        )

    async def close(self, ship_budget_s: float) -> None:
        """Seal and ship what the spool holds within the budget, then write the last digest;
        what does not fit stays on disk (spool and digest journal) for the next process."""
        deadline = time.monotonic() + ship_budget_s
        try:
            await self._shipper.drain(deadline)
            if self._digester is not None:
                # A digest gets at least a moment even when shipping used the whole budget.
                await self._digester.close(max(deadline, time.monotonic() + 2.0))
        finally:
            await self._spool.close()
            self._slot.close()
            if self._signer is not None:
                await self._signer.close()
            await self._sink.__aexit__(None, None, None)


async def _signer(config: Config) -> Signer | None:
    if config.digest_signing_key_file:
        return FileSigner(Path(config.digest_signing_key_file))
    if config.digest_kms_key_id:
        return await KmsSigner(config.digest_kms_key_id, config.aws_region).open()
    return None
