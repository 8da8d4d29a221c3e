"""Build the audit record (schema v1, see RECORD.md) from plain facts. Pure functions only.

Nothing here touches aiohttp or the network: the proxy collects facts while the
exchange runs and calls `build_record` once when it ends, whatever the outcome.
Every function is total: malformed bodies become text, never an exception.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from .json_body import record_json

SCHEMA_VERSION = 1
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BodyFacts:
    """What the sidecar kept of a body: its head (at most the record limit) and digest."""

    head: bytes
    size: int
    sha256: str
    content_type: str | None = None
    content_encoding: str | None = None
    parsed: Any = None  # the whole body as verbatim JSON (json_body.record_json), if it is


@dataclass(frozen=True)
class Identity:
    """Who wrote the record: the sidecar's version and where it runs."""

    version: str
    host: str
    task_arn: str | None
    pid: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "host": self.host,
            "taskArn": self.task_arn,
            "pid": self.pid,
        }


def iso_utc(epoch_seconds: float) -> str:
    """UTC ISO-8601 with microseconds and `Z`, e.g. 2026-11-26T20:19:11.123456Z."""
    # isoformat() is strftime's output here (+00:00 for Z) at half its cost.
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _inflate(data: bytes, encoding: str, limit: int) -> tuple[bytes, bool] | None:
    """Undo gzip/deflate, keeping at most `limit` bytes; None if it cannot be undone."""
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        return None
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail:
        return out[:limit], True
    return out, not inflater.eof  # the compressed bytes we kept were cut short


def inflates_beyond(data: bytes, encoding: str, limit: int) -> bool:
    """True when undoing gzip/deflate would give more than `limit` bytes (a bomb).

    Inflates in 1 MiB steps and keeps nothing, so memory stays bounded whatever
    the ratio. Unknown codings and undecodable bytes are not judged here (False):
    they are forwarded as sent and vLLM answers them.
    """
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        return False
    inflater = zlib.decompressobj(wbits)
    total, tail = 0, data
    try:
        while tail and not inflater.eof:
            total += len(inflater.decompress(tail, 1 << 20))
            if total > limit:
                return True
            tail = inflater.unconsumed_tail
    except zlib.error:
        return False
    return False


def _is_text(data: bytes) -> bool:
    """UTF-8 throughout, allowing a character cut at the end (a truncated head)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


_TEXTUAL_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "+json")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_binary(media_type: str) -> bool:
    """A declared type whose bytes are not text (audio, images, octet streams)."""
    if not media_type or "json" in media_type:
        return False
    return not any(media_type.startswith(t) or media_type.endswith(t) for t in _TEXTUAL_TYPES)


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1", "replace")
    return None


def _disposition(headers: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in headers.split(b"\r\n"):
        name, _, value = line.decode("utf-8", "replace").partition(":")
        key = name.strip().lower()
        if key == "content-type":
            out["contentType"] = value.strip()
        elif key == "content-disposition":
            for param in value.split(";")[1:]:
                pkey, _, pvalue = param.strip().partition("=")
                if pkey in ("name", "filename"):
                    out[pkey] = pvalue.strip().strip('"')
    return out


def multipart_view(data: bytes, content_type: str) -> list[dict[str, Any]] | None:
    """The parts of a multipart/form-data body: text fields with their value, files by size.

    Works on a cut body too: a part without its closing boundary is marked
    `incomplete`. Audio or image bytes never enter the record.
    """
    boundary = _boundary(content_type)
    if boundary is None:
        return None
    parts: list[dict[str, Any]] = []
    for chunk in data.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, body = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        part: dict[str, Any] = _disposition(head)
        complete = body.endswith(b"\r\n")
        body = body[:-2] if complete else body
        if "filename" in part or _is_binary(_media_type(part.get("contentType"))):
            part["bytes"] = len(body)
        else:
            part["value"] = body.decode("utf-8", "replace")
        if not complete:
            part["incomplete"] = True
        parts.append(part)
    return parts


def _parsed(data: bytes, content_type: str | None, truncated: bool) -> Any:
    """JSON when the bytes are whole JSON, multipart fields, text; None when empty or binary."""
    if not data:
        return None
    media_type = _media_type(content_type)
    if media_type == "multipart/form-data":
        parts = multipart_view(data, content_type or "")
        if parts is not None:
            return {"multipart": parts}
    if _is_binary(media_type):
        return None
    looks_json = (content_type is not None and "json" in content_type.lower()) or (
        data.lstrip()[:1] in (b"{", b"[")
    )
    if looks_json and not truncated:
        verbatim = record_json(data)
        if verbatim is not None:
            return verbatim
    return data.decode("utf-8", "replace")


def body_view(facts: BodyFacts, limit: int) -> dict[str, Any]:
    """The record's view of a body: parsed JSON when it is JSON, else text; cut at `limit`.

    Multipart form data (audio uploads) keeps its text fields and the size of
    each file; other binary types (audio, images, octet streams) are recorded
    as null with their size and digest. A compressed body is inflated for the
    record (at most `limit` bytes, from as much of it as was kept); one that
    cannot be inflated is recorded as it came when it is UTF-8 text (vLLM parses
    the bytes as sent), else as null.
    """
    truncated = facts.size > limit
    head = facts.head[:limit]
    encoding = (facts.content_encoding or "identity").strip().lower()
    if encoding != "identity":
        inflated = _inflate(head, encoding, limit)
        if inflated is None:
            view: dict[str, Any] = {
                "body": None,
                "bytes": facts.size,
                "sha256": facts.sha256,
                "truncated": truncated,
            }
            if _is_text(head):
                # vLLM never undoes a Content-Encoding: it parsed these very bytes (a plain
                # prompt labelled `br` or `gzip` runs), so text is the record's body.
                view = body_view(replace(facts, content_encoding=None, parsed=None), limit)
            return {**view, "contentEncoding": encoding, "decoded": False}
        head, cut = inflated
        return {
            "body": _parsed(head, facts.content_type, truncated or cut),
            "bytes": facts.size,
            "sha256": facts.sha256,
            "truncated": truncated or cut,
            "contentEncoding": encoding,
            "decoded": True,
        }
    elif facts.parsed is not None and not truncated:
        return {
            "body": facts.parsed,
            "bytes": facts.size,
            "sha256": facts.sha256,
            "truncated": False,
        }
    return {
        "body": _parsed(head, facts.content_type, truncated),
        "bytes": facts.size,
        "sha256": facts.sha256,
        "truncated": truncated,
    }


def attribution(headers: Mapping[str, str]) -> dict[str, str]:
    """source / userId / requestType / projectId from the x-llm-* values (`unknown` if absent).

    `headers` maps lower-case header names to their values as
    `headers.read_identity` decoded them (UTF-8, checked, once each).
    """

    def get(name: str) -> str:
        value = headers.get(name, "").strip()
        return value or UNKNOWN

    source = get("x-llm-source")
    project = headers.get("x-llm-project", "").strip() or source
    return {
        "source": source,
        "userId": get("x-llm-user"),
        "requestType": get("x-llm-request-type"),
        "projectId": project,
    }


def usage_view(usage: Any) -> dict[str, int | None] | None:
    """OpenAI usage (snake_case) as the record's camelCase; None when absent."""
    if not isinstance(usage, dict):
        return None

    def count(name: str) -> int | None:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # Chat/completions name them prompt/completion; the Responses API input/output.
    prompt = count("prompt_tokens")
    if prompt is None:
        prompt = count("input_tokens")
    completion = count("completion_tokens")
    if completion is None:
        completion = count("output_tokens")
    total = count("total_tokens")
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    if prompt is None and completion is None and total is None:
        return None
    return {"promptTokens": prompt, "completionTokens": completion, "totalTokens": total}


def build_record(
    *,
    request_id: str,
    started_at: float,
    method: str,
    path: str,
    query: str,
    request_headers: dict[str, str],
    identity_headers: Mapping[str, str],
    edge: Mapping[str, str | None],
    request_body: dict[str, Any],
    status_code: int,
    latency_ms: float,
    ttft_ms: float | None,
    outcome: str,
    error: dict[str, Any] | None,
    model: str | None,
    stream: bool,
    usage: dict[str, int | None] | None,
    response_headers: dict[str, str],
    response_body: dict[str, Any],
    choices: list[dict[str, Any]] | None,
    events: int | None,
    stream_error: Any,
    identity: Identity,
) -> dict[str, Any]:
    """The one audit record of an exchange (camelCase, schema v1)."""
    return {
        "schemaVersion": SCHEMA_VERSION,
        "requestId": request_id,
        "timestamp": iso_utc(started_at),
        "method": method,
        "path": path,
        "query": query,
        **attribution(identity_headers),
        "apiKeyId": edge.get("apiKeyId"),
        "edgeRequestId": edge.get("edgeRequestId"),
        "statusCode": status_code,
        "latencyMs": round(latency_ms, 3),
        "ttftMs": None if ttft_ms is None else round(ttft_ms, 3),
        "outcome": outcome,
        "error": error,
        "model": model,
        "stream": stream,
        "usage": usage,
        "request": {"headers": request_headers, **request_body},
        "response": {
            "headers": response_headers,
            **response_body,
            "choices": choices,
            "events": events,
            "streamError": stream_error,
        },
        "sidecar": identity.as_dict(),
    }


def encode_record(record: dict[str, Any]) -> bytes:
    """One line of UTF-8 JSON, no trailing newline."""
    return orjson.dumps(record)


def minimal_record(
    *,
    request_id: str,
    started_at: float,
    method: str,
    path: str,
    identity_headers: Mapping[str, str],
    status: int,
    failure: str,
    request_bytes: int | None,
    request_sha256: str | None,
    response_bytes: int | None,
    sidecar: Mapping[str, Any],
) -> dict[str, Any]:
    """The record written when the full one cannot be built or encoded. Pure and total.

    Plain scalars only, every string made encodable, so it can always be
    built and encoded: nothing is served unrecorded.
    """
    return {
        "schemaVersion": SCHEMA_VERSION,
        "requestId": _safe(request_id),
        "timestamp": iso_utc(started_at),
        "method": _safe(method),
        "path": _safe(path),
        **{k: _safe(v) for k, v in attribution(identity_headers).items()},
        "statusCode": status,
        "outcome": "sidecar_error",
        "error": {"type": "record_failed", "message": _safe(failure)[:500]},
        "request": {"bytes": request_bytes, "sha256": request_sha256},
        "response": {"bytes": response_bytes},
        "sidecar": {
            _safe(str(k)): _safe(v) if isinstance(v, str) else v
            for k, v in sidecar.items()
            if v is None or isinstance(v, str) or (isinstance(v, int) and -(2**63) <= v < 2**64)
        },
        "minimal": True,
    }


def salvage(record: Mapping[str, Any], failure: str) -> dict[str, Any]:
    """A minimal record from whatever a full record that failed to encode still holds."""

    def scalar(value: Any, kind: type, default: Any) -> Any:
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    request: Mapping[str, Any] = _mapping(record.get("request"))
    response: Mapping[str, Any] = _mapping(record.get("response"))
    identity = {
        header: scalar(record.get(field), str, "")
        for header, field in (
            ("x-llm-source", "source"),
            ("x-llm-user", "userId"),
            ("x-llm-request-type", "requestType"),
            ("x-llm-project", "projectId"),
        )
    }
    minimal = minimal_record(
        request_id=scalar(record.get("requestId"), str, "unknown"),
        started_at=_epoch(record.get("timestamp")),
        method=scalar(record.get("method"), str, ""),
        path=scalar(record.get("path"), str, ""),
        identity_headers=identity,
        status=scalar(record.get("statusCode"), int, 0),
        failure=failure,
        request_bytes=scalar(request.get("bytes"), int, None),
        request_sha256=scalar(request.get("sha256"), str, None),
        response_bytes=scalar(response.get("bytes"), int, None),
        sidecar=_mapping(record.get("sidecar")),
    )
    for name in ("apiKeyId", "edgeRequestId"):
        value = record.get(name)
        minimal[name] = _safe(value) if isinstance(value, str) else None
    latency = record.get("latencyMs")
    if isinstance(latency, (int, float)) and not isinstance(latency, bool):
        minimal["latencyMs"] = round(float(latency), 3) if abs(latency) < 1e15 else None
    return minimal


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _safe(text: str) -> str:
    """Text orjson can always encode (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _epoch(timestamp: Any) -> float:
    try:
        return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return datetime.now(UTC).timestamp()
