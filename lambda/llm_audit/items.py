"""Turn one audit record (RECORD.md, schema v1) into one DynamoDB item. Pure functions only.

Invariants (DESIGN.md, wire contract 3):

- Keys are deterministic from the record: `id` = `project#<projectId>`,
  `createdAt` = `<timestamp>#<requestId>`, so re-ingesting a record overwrites
  its item and never duplicates it. The timestamp is rewritten in the canonical
  form `YYYY-MM-DDTHH:MM:SS.ffffffZ` (what the sidecar already writes) so that
  `createdAt` sorts by time whatever the producer's formatting.
- Required: `requestId` (the sidecar's charset, `[A-Za-z0-9._:-]{1,128}`) and a
  parseable `timestamp`; anything else missing becomes `unknown` (labels) or is
  left out (numbers, previews). A missing number is omitted, never NULL, so the
  item simply stays out of the GSI keyed on it (sparse index).
- Labels (`projectId`, `userId`, `source`, `requestType`, `model`, `outcome`)
  go through `normalise_label`: placeholders become `unknown`, and they are cut
  to `MAX_LABEL_CHARS` so they always fit a DynamoDB key.
- Previews are cut at `max_preview_chars` code points; lone surrogates (valid
  JSON, invalid UTF-8) are replaced so the item can always be encoded.
- Numbers are `int` or `Decimal`, never `float` (boto3 refuses floats).

Nothing here does I/O; `InvalidRecord` is the only exception raised on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

UNKNOWN = "unknown"
MAX_LABEL_CHARS = 256
PLACEHOLDER_WORDS = frozenset({"", "-", "null", "undefined", "none", "nil", "n/a"})
TEMPLATE_RE = re.compile(r"^(\$\{.*\}|<.*>|\{\{.*\}\})$", re.DOTALL)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class InvalidRecord(ValueError):
    """The record cannot become an item; the message names the field, never its content."""


@dataclass(frozen=True)
class AuditSource:
    """Where the record was read: the S3 object and the 0-based line in it."""

    bucket: str
    key: str
    line: int


@dataclass(frozen=True)
class ItemRules:
    """The knobs of item building (from the Lambda's environment)."""

    max_preview_chars: int = 2048
    retention_days: int | None = None


def normalise_label(value: object) -> str:
    """A label fit for a key: placeholders and non-scalars become `unknown`."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return UNKNOWN
    text = clean_text(str(value)).strip()
    if text.lower() in PLACEHOLDER_WORDS or TEMPLATE_RE.match(text):
        return UNKNOWN
    return text[:MAX_LABEL_CHARS]


def clean_text(text: str) -> str:
    """The text with lone surrogates replaced, so it always encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def cut(text: str, limit: int) -> str:
    """At most `limit` characters (code points), never a broken one."""
    return clean_text(text[:limit])


def parse_timestamp(value: object) -> datetime:
    """The record's timestamp as an aware UTC datetime (naive means UTC)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("timestamp is missing or not a string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRecord("timestamp is not ISO-8601") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def canonical_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def request_id_of(record: Mapping[str, Any]) -> str:
    value = record.get("requestId")
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise InvalidRecord("requestId is missing or not [A-Za-z0-9._:-]{1,128}")
    return value


def item_keys(project_id: str, timestamp: str, request_id: str) -> dict[str, str]:
    """The table's primary key for a record."""
    return {"id": f"project#{project_id}", "createdAt": f"{timestamp}#{request_id}"}


def as_number(value: object) -> int | Decimal | None:
    """A finite int or Decimal, or None for anything else (bools, strings, NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal) and value.is_finite():
        return value
    return None


def _text_of_content(content: object) -> str | None:
    """Chat message content: a string, or the text parts of a list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts) if parts else None
    return None


def _first_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def prompt_text(record: Mapping[str, Any]) -> str | None:
    """What was asked: the last user message, the completion prompt, else the body text."""
    request = record.get("request")
    body = request.get("body") if isinstance(request, dict) else None
    if body is None:
        return None
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return _text_of_content(message.get("content"))
            return None
        for field in ("prompt", "input"):
            if field in body:
                return _first_text(body[field])
    return json.dumps(body, ensure_ascii=False, default=str)


def _choice_text(choice: object, message_key: str | None) -> str | None:
    if not isinstance(choice, dict):
        return None
    holder = choice.get(message_key) if message_key else choice
    content = holder.get("content") if isinstance(holder, dict) else None
    if isinstance(content, str):
        return content
    text = choice.get("text")
    return text if isinstance(text, str) else None


def response_text(record: Mapping[str, Any]) -> str | None:
    """What the model said: the first choice's text, streamed or not; else a text body."""
    response = record.get("response")
    if not isinstance(response, dict):
        return None
    streamed = response.get("choices")
    if isinstance(streamed, list):
        return _choice_text(streamed[0], None) if streamed else None
    body = response.get("body")
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        return _choice_text(body["choices"][0], "message")
    return None


def expires_at(moment: datetime, retention_days: int | None) -> int | None:
    """TTL in epoch seconds, counted from the request's own time (so it is deterministic)."""
    if retention_days is None:
        return None
    return int((moment + timedelta(days=retention_days)).timestamp())


def build_item(record: Mapping[str, Any], source: AuditSource, rules: ItemRules) -> dict[str, Any]:
    """The DynamoDB item (plain Python values) for one record; raises InvalidRecord."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("record is not a JSON object")
    request_id = request_id_of(record)
    moment = parse_timestamp(record.get("timestamp"))
    source_label = normalise_label(record.get("source"))
    project = normalise_label(record.get("projectId", source_label))
    if project == UNKNOWN:
        project = source_label
    raw_usage = record.get("usage")
    usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    prompt, answer = prompt_text(record), response_text(record)
    attributes: dict[str, Any] = {
        **item_keys(project, canonical_timestamp(moment), request_id),
        "requestId": request_id,
        "projectId": project,
        "userId": normalise_label(record.get("userId")),
        "source": source_label,
        "requestType": normalise_label(record.get("requestType")),
        "model": normalise_label(record.get("model")),
        "outcome": normalise_label(record.get("outcome")),
        "statusCode": as_number(record.get("statusCode")),
        "latencyMs": as_number(record.get("latencyMs")),
        "ttftMs": as_number(record.get("ttftMs")),
        "promptTokens": as_number(usage.get("promptTokens")),
        "completionTokens": as_number(usage.get("completionTokens")),
        "totalTokens": as_number(usage.get("totalTokens")),
        "promptPreview": None if prompt is None else cut(prompt, rules.max_preview_chars),
        "responsePreview": None if answer is None else cut(answer, rules.max_preview_chars),
        "auditBucket": source.bucket,
        "auditObjectKey": source.key,
        "auditLine": source.line,
        "expiresAt": expires_at(moment, rules.retention_days),
    }
    return {name: value for name, value in attributes.items() if value is not None}
