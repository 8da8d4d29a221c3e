"""Header rules, as pure functions: what is forwarded, what is recorded, which request id is used.

- Hop-by-hop headers (RFC 9110 §7.6.1: Connection, Proxy-Connection, Keep-Alive,
  TE, Transfer-Encoding, Upgrade, and every header named in Connection) are
  connection-scoped and never forwarded either way. Host and Content-Length are
  set by the HTTP client for the new connection and body.
- Recorded headers are lower-cased; secrets are replaced by `REDACTED`.
- A client's `x-request-id` is used only if it matches `REQUEST_ID_RE`, because
  it ends up in S3 keys and DynamoDB keys; otherwise a fresh id is generated.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Expect is answered by the sidecar itself (aiohttp sends 100 Continue); the body
# goes upstream in one piece, so vLLM must not be asked to answer it again.
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"host", "content-length", "x-request-id", "expect"}
_NOT_FORWARDED_DOWNSTREAM = HOP_BY_HOP | {"content-length", "x-request-id"}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def _forwardable(
    headers: Iterable[tuple[str, str]], dropped: frozenset[str]
) -> list[tuple[str, str]]:
    items = list(headers)
    drop = dropped | _connection_tokens(items)
    return [(name, value) for name, value in items if name.lower() not in drop]


def upstream_request_headers(
    headers: Iterable[tuple[str, str]], request_id: str
) -> list[tuple[str, str]]:
    """Headers sent to vLLM: the client's end-to-end headers plus our request id."""
    out = _forwardable(headers, _NOT_FORWARDED_UPSTREAM)
    out.append(("X-Request-Id", request_id))
    return out


def client_response_headers(
    headers: Iterable[tuple[str, str]], request_id: str
) -> list[tuple[str, str]]:
    """Headers sent back to the client: vLLM's end-to-end headers plus the request id."""
    out = _forwardable(headers, _NOT_FORWARDED_DOWNSTREAM)
    out.append(("X-Request-Id", request_id))
    return out


def recorded_headers(
    headers: Iterable[tuple[str, str]], redacted: frozenset[str]
) -> dict[str, str]:
    """Lower-cased headers for the audit record, secrets replaced, repeats joined."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        shown = REDACTED if key in redacted else value
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


def choose_request_id(incoming: str | None) -> str:
    """The client's id when it is safe to use in storage keys, else a new one."""
    if incoming is not None and REQUEST_ID_RE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


AUDIT_HEADERS = ("x-llm-source", "x-llm-user", "x-llm-request-type")


def missing_audit_header(headers: Mapping[str, str]) -> str | None:
    """The first required attribution header that is absent or blank, if any."""
    for name in AUDIT_HEADERS:
        if not headers.get(name, "").strip():
            return name
    return None
