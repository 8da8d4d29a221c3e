"""Header rules, as pure functions: what is forwarded, what is recorded, which request id is used.

- Hop-by-hop headers (RFC 9110 §7.6.1: Connection, Proxy-Connection, Keep-Alive,
  TE, Transfer-Encoding, Upgrade, and every header named in Connection) are
  connection-scoped and never forwarded either way. Host and Content-Length are
  set by the HTTP client for the new connection and body.
- Recorded headers are the ones vLLM actually received, lower-cased, values
  decoded as UTF-8; secrets are replaced by `REDACTED`: the fixed names, the
  configured ones, and any header or query parameter whose name contains a
  configured fragment (`auth`, `token`, `key`, `secret`, ... by default).
- Audit identity (`x-llm-*`) headers must each come at most once, be valid
  UTF-8 without control characters and at most `MAX_IDENTITY_CHARS` long;
  anything else is refused (400) rather than guessed at.
- A client's `x-request-id` is used only if it matches `REQUEST_ID_RE`, because
  it ends up in S3 keys and DynamoDB keys; otherwise a fresh id is generated.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote

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


class Redaction:
    """Which header and query-parameter names are secrets: exact names, or containing a fragment."""

    __slots__ = ("_fragments", "_names")

    def __init__(self, names: Iterable[str], fragments: Iterable[str]) -> None:
        self._names = frozenset(n.lower() for n in names)
        # One C-level search per name instead of a Python loop over the fragments (every
        # header of every request is asked: 14 usual headers, 8.5 -> 5.2 us); same answer
        # as `any(f in key ...)`, linear in name length x fragments either way (for 8 KiB
        # names and 50+ fragments the loop was faster, 0.9 vs 2.6 ms: names are capped
        # by aiohttp's header limits and the default has 9 fragments).
        found = [re.escape(f.lower()) for f in fragments]
        self._fragments = re.compile("|".join(found)).search if found else None

    def secret(self, name: str) -> bool:
        key = name.lower()
        if key in self._names:
            return True
        return self._fragments is not None and self._fragments(key) is not None


def recorded_headers(headers: Iterable[tuple[str, str]], redaction: Redaction) -> dict[str, str]:
    """Lower-cased headers for the audit record, secrets replaced, repeats joined.

    Values arrive as latin-1 text (the wire's bytes, one char per byte) and are
    recorded as UTF-8 text, which is what clients send.
    """
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        shown = REDACTED if redaction.secret(key) else _utf8(value)
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


def recorded_query(query: str, redaction: Redaction) -> str:
    """The query string with the values of secret-named parameters replaced."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(redaction.secret(name) for name, _ in pairs):
        return query
    return "&".join(
        f"{quote(name, safe='')}={REDACTED if redaction.secret(name) else quote(value, safe='')}"
        for name, value in pairs
    )


def _utf8(value: str) -> str:
    if value.isascii():
        return value
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


def choose_request_id(incoming: str | None) -> str:
    """The client's id when it is safe to use in storage keys, else a new one."""
    if incoming is not None and REQUEST_ID_RE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


AUDIT_HEADERS = ("x-llm-source", "x-llm-user", "x-llm-request-type")
# Header -> record field. x-llm-project is optional (the source stands in for it).
IDENTITY_FIELDS = {
    "x-llm-source": "source",
    "x-llm-user": "userId",
    "x-llm-request-type": "requestType",
    "x-llm-project": "projectId",
}
EDGE_FIELDS = {"x-edge-api-key-id": "apiKeyId", "x-edge-request-id": "edgeRequestId"}
MAX_IDENTITY_CHARS = 256
# Controls (C0, DEL, C1), the line and paragraph separators (a line break to some viewers
# and to str.splitlines) and the bidirectional embeddings, overrides and isolates: a value
# holding one can display as another caller's. Marks (U+200E/F) and joiners stay: names in
# Arabic, Hebrew or Indic scripts and emoji sequences need them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class IdentityProblem(ValueError):
    def __init__(self, header: str, kind: str, why: str = "") -> None:
        super().__init__(f"{header}: {kind} {why}".strip())
        self.header = header
        self.kind = kind  # "missing", "repeated" or "invalid"
        self.why = why


def read_identity(raw_headers: Iterable[tuple[bytes, bytes]], *, required: bool) -> dict[str, str]:
    """The identity header values (UTF-8, stripped), by header name; raises IdentityProblem."""
    seen: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        if name not in IDENTITY_FIELDS:
            continue
        if name in seen:
            raise IdentityProblem(name, "repeated")
        try:
            value = raw_value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise IdentityProblem(name, "invalid", "is not valid UTF-8") from None
        if len(value) > MAX_IDENTITY_CHARS:
            raise IdentityProblem(
                name, "invalid", f"is longer than {MAX_IDENTITY_CHARS} characters"
            )
        if _CONTROL.search(value):
            raise IdentityProblem(name, "invalid", "contains control or bidi-override characters")
        seen[name] = value
    if required:
        for name in AUDIT_HEADERS:
            if not seen.get(name):
                raise IdentityProblem(name, "missing")
    return seen


def read_edge(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str | None]:
    """apiKeyId / edgeRequestId from the headers API Gateway's integration sets (trusted there)."""
    out: dict[str, str | None] = dict.fromkeys(EDGE_FIELDS.values())
    for raw_name, raw_value in raw_headers:
        field = EDGE_FIELDS.get(raw_name.decode("latin-1").lower())
        if field is not None:
            value = raw_value.decode("utf-8", "replace").strip()[:MAX_IDENTITY_CHARS]
            out[field] = value or None
    return out
