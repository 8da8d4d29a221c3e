"""Find the audit objects an invocation must ingest, in every event shape the stack delivers.

Shapes understood (pure parsing, no I/O):

- an S3 notification (`{"Records": [{"eventSource": "aws:s3", ...}]}`), the
  original S3 -> Lambda wiring: the whole event is one unit of work;
- an SQS event whose message bodies carry S3 notifications (S3 -> SQS -> Lambda,
  the local runner, the DLQ redrive): each message is its own unit, so failures
  can be reported per message (`batchItemFailures`);
- inside a message body: a plain S3 notification, the same wrapped by SNS
  (`{"Type": "Notification", "Message": "..."}`) or by a Lambda destination
  (`{"requestPayload": ...}`), and S3's `s3:TestEvent`.

Invariants: keys are URL-decoded exactly once, as S3 form-encodes them
(`+` is a space, `%2B` a plus); `s3:TestEvent`, events other than
`ObjectCreated:*` and keys that are not audit objects under the prefix are
skipped and counted, never failed. A message that cannot be understood is a
failed unit (it stays in its queue as evidence), never an exception for the
whole batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from llm_audit.objects import is_audit_key


class UnknownEvent(ValueError):
    """The invocation's event is neither an S3 nor an SQS event."""


@dataclass(frozen=True)
class ObjectRef:
    """One S3 object to ingest (the version, when the bucket is versioned)."""

    bucket: str
    key: str
    version_id: str | None = None


@dataclass(frozen=True)
class WorkUnit:
    """What succeeds or fails together: the whole S3 event, or one SQS message."""

    unit_id: str | None
    objects: tuple[ObjectRef, ...] = ()
    skipped: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ParsedEvent:
    source: Literal["s3", "sqs"]
    units: tuple[WorkUnit, ...]


def _object_of(record: Mapping[str, Any], prefix: str) -> ObjectRef | None:
    """The audit object a notification record names, or None when it is not one."""
    if record.get("eventSource") != "aws:s3":
        return None
    if not str(record.get("eventName", "")).startswith("ObjectCreated"):
        return None
    s3 = record["s3"]
    key = unquote_plus(s3["object"]["key"])
    if not is_audit_key(key, prefix):
        return None
    return ObjectRef(s3["bucket"]["name"], key, s3["object"].get("versionId") or None)


def _unwrap(notification: Any) -> Any:
    """The S3 notification inside an SNS or Lambda-destination envelope."""
    for _ in range(3):
        if isinstance(notification, dict) and notification.get("Type") == "Notification":
            notification = json.loads(notification["Message"])
        elif isinstance(notification, dict) and "requestPayload" in notification:
            notification = notification["requestPayload"]
        else:
            break
    return notification


def objects_in(notification: Any, prefix: str) -> tuple[list[ObjectRef], int]:
    """The audit objects of an S3 notification and how many records were skipped.

    Raises KeyError/TypeError/ValueError when the notification is malformed.
    """
    notification = _unwrap(notification)
    if not isinstance(notification, dict):
        raise ValueError("notification is not a JSON object")
    if notification.get("Event") == "s3:TestEvent":
        return [], 1
    records = notification["Records"]
    if not isinstance(records, list):
        raise ValueError("Records is not a list")
    found: list[ObjectRef] = []
    for record in records:
        ref = _object_of(record, prefix)
        if ref is not None and ref not in found:
            found.append(ref)
    return found, len(records) - len(found)


def _unit(unit_id: str | None, notification: Any, prefix: str) -> WorkUnit:
    try:
        objects, skipped = objects_in(notification, prefix)
    except (KeyError, TypeError, ValueError) as exc:
        return WorkUnit(unit_id, error=f"not an S3 notification ({type(exc).__name__})")
    return WorkUnit(unit_id, tuple(objects), skipped)


def _sqs_unit(message: Mapping[str, Any], prefix: str) -> WorkUnit:
    message_id = str(message["messageId"])
    try:
        body = json.loads(message.get("body") or "")
    except ValueError:
        return WorkUnit(message_id, error="message body is not JSON")
    return _unit(message_id, body, prefix)


def parse_event(event: Mapping[str, Any], prefix: str) -> ParsedEvent:
    """Split an invocation's event into units of work; raises UnknownEvent."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if isinstance(records, list) and records:
        sources = {r.get("eventSource") for r in records if isinstance(r, dict)}
        if sources == {"aws:sqs"}:
            return ParsedEvent("sqs", tuple(_sqs_unit(m, prefix) for m in records))
        if sources == {"aws:s3"}:
            return ParsedEvent("s3", (_unit(None, event, prefix),))
    if isinstance(event, Mapping) and event.get("Event") == "s3:TestEvent":
        return ParsedEvent("s3", (WorkUnit(None, skipped=1),))
    raise UnknownEvent("event carries neither S3 nor SQS records")
