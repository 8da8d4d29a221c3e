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
- Numbers always fit DynamoDB's Number type (38 significant digits, magnitude
  1E-130 to 9.99…E+125), by one rule (`fit_number`): rounded half-even to 38
  digits; a magnitude below 1E-130 becomes 0; beyond the maximum (±Infinity
  included) it is clamped to ±9.9999999999999999999999999999999999999E+125, so
  the item stays in the index keyed on it; NaN is left out. When the stored
  value differs from the record's, `<name>AsRecorded` holds the record's number
  as text (at most `MAX_RECORDED_NUMBER_CHARS`). Ints and Decimals only, never
  `float` (boto3 refuses floats). A non-number where a number belongs is left out.
- Timestamps outside what `datetime` holds in UTC (years 1–9999) make the record
  invalid; a TTL beyond year 9999 is left out (the item is then kept).
- Edge attribution (`apiKeyId`, `edgeRequestId`, set by API Gateway from its
  own context) is copied when the record has it, as a label; nothing else of
  the record's headers or identity is, and never a key's value.

Nothing here does I/O; `InvalidRecord` is the only exception raised on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

UNKNOWN = "unknown"
MAX_LABEL_CHARS = 256
PLACEHOLDER_WORDS = frozenset({"", "-", "null", "undefined", "none", "nil", "n/a"})
TEMPLATE_RE = re.compile(r"^(\$\{.*\}|<.*>|\{\{.*\}\})$", re.DOTALL)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_RECORDED_NUMBER_CHARS = 64
DYNAMO_MAX = Decimal("9.9999999999999999999999999999999999999E+125")
DYNAMO_MIN = Decimal("1E-130")
# boto3's own DynamoDB context (38 digits, exponents -128..126) without its traps:
# what it rounds here is exactly what its serializer then accepts.
DYNAMO_ROUNDING = Context(prec=38, rounding=ROUND_HALF_EVEN, Emin=-128, Emax=126, traps=[])
NUMBER_FIELDS = ("statusCode", "latencyMs", "ttftMs")
USAGE_FIELDS = ("promptTokens", "completionTokens", "totalTokens")
EDGE_FIELDS = ("apiKeyId", "edgeRequestId")


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
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise InvalidRecord("timestamp is out of range in UTC (years 1-9999)") from None


def canonical_timestamp(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ`, four-digit years included (strftime's %Y is not)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def request_id_of(record: Mapping[str, Any]) -> str:
    value = record.get("requestId")
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise InvalidRecord("requestId is missing or not [A-Za-z0-9._:-]{1,128}")
    return value


def item_keys(project_id: str, timestamp: str, request_id: str) -> dict[str, str]:
    """The table's primary key for a record."""
    return {"id": f"project#{project_id}", "createdAt": f"{timestamp}#{request_id}"}


def as_number(value: object) -> int | Decimal | None:
    """A JSON number as an int or Decimal (NaN and infinities included); None for non-numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value else Decimal("NaN")
    return None


def fit_number(value: int | Decimal) -> int | Decimal | None:
    """The value DynamoDB stores for a number (see the module docstring); None for NaN."""
    if isinstance(value, int):
        if -(10**38) < value < 10**38:
            return value
        value = Decimal(value)
    if value.is_nan():
        return None
    fitted = DYNAMO_ROUNDING.plus(value) if value.is_finite() else value
    if fitted.is_zero() or abs(fitted) < DYNAMO_MIN:
        return 0
    if abs(fitted) > DYNAMO_MAX:
        return DYNAMO_MAX.copy_sign(fitted)
    return fitted


def number_attributes(name: str, value: object) -> dict[str, Any]:
    """`{name: stored}` for a JSON number, plus `{name}AsRecorded` when they differ."""
    number = as_number(value)
    if number is None:
        return {}
    stored = fit_number(number)
    attributes: dict[str, Any] = {} if stored is None else {name: stored}
    if stored is None or stored != number:
        attributes[f"{name}AsRecorded"] = _number_text(number)
    return attributes


def _number_text(number: int | Decimal) -> str:
    text = str(number) if isinstance(number, Decimal) else str(Decimal(number))
    if len(text) <= MAX_RECORDED_NUMBER_CHARS:
        return text
    return f"{text[: MAX_RECORDED_NUMBER_CHARS - 12]}…({len(text)} ch)"


def edge_attributes(record: Mapping[str, Any]) -> dict[str, str]:
    """`apiKeyId` / `edgeRequestId` when the record carries them (never a key's value)."""
    found = {name: normalise_label(record.get(name)) for name in EDGE_FIELDS}
    return {name: value for name, value in found.items() if value != UNKNOWN}


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
    try:
        return int((moment + timedelta(days=retention_days)).timestamp())
    except OverflowError:  # past year 9999: no TTL, the item is kept
        return None


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
        **edge_attributes(record),
        "promptPreview": None if prompt is None else cut(prompt, rules.max_preview_chars),
        "responsePreview": None if answer is None else cut(answer, rules.max_preview_chars),
        "auditBucket": source.bucket,
        "auditObjectKey": source.key,
        "auditLine": source.line,
        "expiresAt": expires_at(moment, rules.retention_days),
    }
    for name in NUMBER_FIELDS:
        attributes.update(number_attributes(name, record.get(name)))
    for name in USAGE_FIELDS:
        attributes.update(number_attributes(name, usage.get(name)))
    return {name: value for name, value in attributes.items() if value is not None}
