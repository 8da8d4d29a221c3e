"""The ingestion: units of work -> objects -> records -> items -> DynamoDB (+ raw archive).

`ingest()` talks to the world only through two narrow seams, an object source
(S3) and an item sink (DynamoDB writer), so it runs the same in Lambda, in the
local SQS runner, in the DLQ redrive and in tests.

Invariants:

- A unit (the whole S3 event, or one SQS message) fails when anything in it
  fails: a message that cannot be understood, an object that cannot be read or
  decoded, a record that cannot become an item, an item still unwritten after
  retries, a failed archive copy. Everything else in a failing unit is still
  ingested (a poisoned line never blocks its neighbours); the failure only
  makes the unit be retried and, in the end, kept in the DLQ. Re-ingesting is
  idempotent, so retrying the good part is harmless.
- Objects are streamed: lines are decoded, turned into items and written as
  they arrive, so memory holds one line and one group of items, never the
  object's records. An object over `MAX_OBJECT_BYTES` (decompressed) fails
  with that reason; what was written before the cap stays written.
- Every failure is logged with bucket, key and line when there is one, and a
  reason that never contains record content. At most `MAX_LOGGED_BAD_LINES`
  bad lines are logged one by one per object; the rest are counted (summary).
- No new object is started once the time budget is spent, and an object stops
  being read when it runs out: the rest of the unit fails cleanly instead of
  being cut off by the Lambda timeout.
- The report keeps the first `MAX_REASONS` failure reasons, so the error an
  invocation raises says why (it is what Lambda's DLQ keeps as ErrorMessage).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_audit.events import ObjectRef, WorkUnit
from llm_audit.items import AuditSource, InvalidRecord, ItemRules, build_item
from llm_audit.log import JsonLog
from llm_audit.objects import DecodedLine, Limits, UnreadableObject, decode_lines
from llm_audit.s3 import ObjectUnavailable
from llm_audit.writer import Deadline, WriteOutcome

MAX_LOGGED_BAD_LINES = 100
MAX_REASONS = 5


class ObjectSource(Protocol):
    def chunks(self, ref: ObjectRef) -> Iterable[bytes]: ...

    def archive(self, ref: ObjectRef) -> None: ...


class ItemSink(Protocol):
    def write(self, items: Iterable[Mapping[str, Any]], deadline: Deadline) -> WriteOutcome: ...


@dataclass
class IngestReport:
    """Counts of one invocation, and the units that failed (by id; None for an S3 event)."""

    units: int = 0
    objects: int = 0
    skipped: int = 0
    records: int = 0
    items: int = 0
    bad_records: int = 0
    failed_objects: int = 0
    failed_items: int = 0
    failed_archives: int = 0
    failed_units: list[str | None] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def note(self, key: str, reason: str) -> None:
        """Keep a failure's reason for the invocation's error (the first few only)."""
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{key}: {reason}")

    @property
    def failures(self) -> int:
        return self.bad_records + self.failed_objects + self.failed_items + self.failed_archives

    def summary(self) -> dict[str, int]:
        return {
            "units": self.units,
            "objects": self.objects,
            "skipped": self.skipped,
            "records": self.records,
            "items": self.items,
            "badRecords": self.bad_records,
            "failedObjects": self.failed_objects,
            "failedItems": self.failed_items,
            "failedArchives": self.failed_archives,
            "failures": self.failures,
            "failedUnits": len(self.failed_units),
        }


def item_of(ref: ObjectRef, decoded: DecodedLine, rules: ItemRules) -> dict[str, Any] | str:
    """The item of one decoded line, or the reason it is not one."""
    if decoded.record is None:
        return decoded.error or "not a record"
    try:
        return build_item(decoded.record, AuditSource(ref.bucket, ref.key, decoded.line), rules)
    except InvalidRecord as exc:
        return str(exc)


class ObjectItems:
    """An object's items as its lines arrive; bad lines are logged and counted on the way.

    Iterating never raises for the object's content: an unreadable or too large
    object, or a spent time budget, ends the items and sets `stopped`.
    """

    def __init__(
        self, ref: ObjectRef, lines: Iterator[DecodedLine], rules: ItemRules, run: Ingestion
    ) -> None:
        self._ref = ref
        self._lines = lines
        self._rules = rules
        self._run = run
        self.records = 0
        self.bad = 0
        self.stopped: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for decoded in self._lines:
                self.records += 1
                made = item_of(self._ref, decoded, self._rules)
                if isinstance(made, str):
                    self._bad_line(decoded.line, made)
                else:
                    yield made
                if self._run.deadline.remaining() <= 0:
                    self.stopped = f"time budget exhausted after line {decoded.line}"
                    return
        except (ObjectUnavailable, UnreadableObject) as exc:
            self.stopped = str(exc)

    def _bad_line(self, line: int, reason: str) -> None:
        self.bad += 1
        if self.bad == 1:
            self._run.report.note(self._ref.key, f"line {line}: {reason}")
        if self.bad <= MAX_LOGGED_BAD_LINES:
            self._run.log.error(
                "bad_record", bucket=self._ref.bucket, key=self._ref.key, line=line, reason=reason
            )


class Ingestion:
    """One invocation's worth of ingesting; `run` returns the report."""

    def __init__(
        self,
        source: ObjectSource,
        sink: ItemSink,
        rules: ItemRules,
        limits: Limits,
        deadline: Deadline,
        log: JsonLog,
    ) -> None:
        self._source = source
        self._sink = sink
        self._rules = rules
        self._limits = limits
        self.deadline = deadline
        self.log = log
        self.report = IngestReport()

    def run(self, units: Iterable[WorkUnit]) -> IngestReport:
        for unit in units:
            if not self._unit(unit):
                self.report.failed_units.append(unit.unit_id)
        return self.report

    def _unit(self, unit: WorkUnit) -> bool:
        self.report.units += 1
        self.report.skipped += unit.skipped
        if unit.error is not None:
            self.log.error("message_unreadable", messageId=unit.unit_id, reason=unit.error)
            self.report.note(f"message {unit.unit_id}", unit.error)
            return False
        ok = True
        for ref in unit.objects:
            ok = self._object(ref) and ok
        return ok

    def _object(self, ref: ObjectRef) -> bool:
        self.report.objects += 1
        where = {"bucket": ref.bucket, "key": ref.key}
        if self.deadline.remaining() <= 0:
            return self._object_failed(ref, "time budget exhausted before reading")
        lines = decode_lines(ref.key, self._source.chunks(ref), self._limits)
        items = ObjectItems(ref, lines, self._rules, self)
        outcome = self._sink.write(items, self.deadline)
        self.report.records += items.records
        self.report.bad_records += items.bad
        if items.bad > MAX_LOGGED_BAD_LINES:
            unlogged = items.bad - MAX_LOGGED_BAD_LINES
            self.log.error("bad_records_not_logged", **where, count=unlogged)
        self._written(ref, outcome)
        if items.stopped is not None:
            self._object_failed(ref, items.stopped)
            return False
        return self._archive(ref, where) and not items.bad and not outcome.failed

    def _written(self, ref: ObjectRef, outcome: WriteOutcome) -> None:
        self.report.items += outcome.written
        self.report.failed_items += len(outcome.failed)
        for failed in outcome.failed:
            line = failed.item.get("auditLine")
            self.report.note(ref.key, f"line {line}: item not written: {failed.reason}")
            self.log.error(
                "item_not_written",
                bucket=ref.bucket,
                key=ref.key,
                line=line,
                requestId=failed.item.get("requestId"),
                reason=failed.reason,
            )

    def _archive(self, ref: ObjectRef, where: dict[str, str]) -> bool:
        try:
            self._source.archive(ref)
        except ObjectUnavailable as exc:
            self.report.failed_archives += 1
            self.report.note(ref.key, str(exc))
            self.log.error("archive_failed", **where, reason=str(exc))
            return False
        return True

    def _object_failed(self, ref: ObjectRef, reason: str) -> bool:
        self.report.failed_objects += 1
        self.report.note(ref.key, reason)
        self.log.error("object_failed", bucket=ref.bucket, key=ref.key, reason=reason)
        return False


def ingest(
    units: Iterable[WorkUnit],
    source: ObjectSource,
    sink: ItemSink,
    rules: ItemRules,
    limits: Limits,
    deadline: Deadline,
    log: JsonLog,
) -> IngestReport:
    """Ingest every unit; see the module docstring for what fails and what is kept."""
    return Ingestion(source, sink, rules, limits, deadline, log).run(units)
