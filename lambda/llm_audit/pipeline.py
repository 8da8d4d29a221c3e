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
- Every failure is logged once, with bucket, key and line when there is one,
  and a reason that never contains record content.
- No new object is started once the time budget is spent: the rest of the
  unit fails cleanly instead of being cut off by the Lambda timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_audit.events import ObjectRef, WorkUnit
from llm_audit.items import AuditSource, InvalidRecord, ItemRules, build_item
from llm_audit.log import JsonLog
from llm_audit.objects import DecodedLine, UnreadableObject, decode_object
from llm_audit.s3 import ObjectUnavailable
from llm_audit.writer import Deadline, WriteOutcome


class ObjectSource(Protocol):
    def read(self, ref: ObjectRef) -> bytes: ...

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


def items_of(
    ref: ObjectRef, lines: Sequence[DecodedLine], rules: ItemRules
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The items of an object's lines, and (line, reason) for each line that is not one."""
    items: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for decoded in lines:
        if decoded.record is None:
            bad.append((decoded.line, decoded.error or "not a record"))
            continue
        source = AuditSource(ref.bucket, ref.key, decoded.line)
        try:
            items.append(build_item(decoded.record, source, rules))
        except InvalidRecord as exc:
            bad.append((decoded.line, str(exc)))
    return items, bad


class Ingestion:
    """One invocation's worth of ingesting; `run` returns the report."""

    def __init__(
        self,
        source: ObjectSource,
        sink: ItemSink,
        rules: ItemRules,
        deadline: Deadline,
        log: JsonLog,
    ) -> None:
        self._source = source
        self._sink = sink
        self._rules = rules
        self._deadline = deadline
        self._log = log
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
            self._log.error("message_unreadable", messageId=unit.unit_id, reason=unit.error)
            return False
        ok = True
        for ref in unit.objects:
            ok = self._object(ref) and ok
        return ok

    def _object(self, ref: ObjectRef) -> bool:
        self.report.objects += 1
        where = {"bucket": ref.bucket, "key": ref.key}
        if self._deadline.remaining() <= 0:
            return self._object_failed(where, "time budget exhausted before reading")
        try:
            lines = decode_object(ref.key, self._source.read(ref))
        except (ObjectUnavailable, UnreadableObject) as exc:
            return self._object_failed(where, str(exc))
        items, bad = items_of(ref, lines, self._rules)
        self.report.records += len(lines)
        self.report.bad_records += len(bad)
        for line, reason in bad:
            self._log.error("bad_record", **where, line=line, reason=reason)
        outcome = self._sink.write(items, self._deadline)
        self.report.items += outcome.written
        self.report.failed_items += len(outcome.failed)
        for failed in outcome.failed:
            self._log.error(
                "item_not_written",
                **where,
                line=failed.item.get("auditLine"),
                requestId=failed.item.get("requestId"),
                reason=failed.reason,
            )
        return self._archive(ref, where) and not bad and not outcome.failed

    def _archive(self, ref: ObjectRef, where: dict[str, str]) -> bool:
        try:
            self._source.archive(ref)
        except ObjectUnavailable as exc:
            self.report.failed_archives += 1
            self._log.error("archive_failed", **where, reason=str(exc))
            return False
        return True

    def _object_failed(self, where: dict[str, str], reason: str) -> bool:
        self.report.failed_objects += 1
        self._log.error("object_failed", **where, reason=reason)
        return False


def ingest(
    units: Iterable[WorkUnit],
    source: ObjectSource,
    sink: ItemSink,
    rules: ItemRules,
    deadline: Deadline,
    log: JsonLog,
) -> IngestReport:
    """Ingest every unit; see the module docstring for what fails and what is kept."""
    return Ingestion(source, sink, rules, deadline, log).run(units)
