"""The sidecar's own errors: a small closed set, each with its status, outcome and retryability.

Clients see them in the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}`; the audit record sees the
outcome. Exceptions raised by the upstream client (`upstream.py`) while talking
to vLLM are mapped to these in exactly one place, `from_upstream_exception`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from .upstream import UpstreamError, UpstreamTimeout, UpstreamUnreachable

REJECTED = "rejected"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_TIMEOUT = "upstream_timeout"
CLIENT_DISCONNECTED = "client_disconnected"
COMPLETED = "completed"


@dataclass(frozen=True)
class ProxyError(Exception):
    """An exchange the sidecar ends itself, before or instead of vLLM's answer."""

    status: int
    code: str
    message: str
    outcome: str
    type: str = "invalid_request_error"
    param: str | None = None
    retryable: bool = False

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def as_record_error(self) -> dict[str, str]:
        return {"type": self.code, "message": self.message}


def not_found(path: str) -> ProxyError:
    return ProxyError(404, "not_found", f"No route for {path} on this endpoint.", REJECTED)


def missing_audit_header(name: str) -> ProxyError:
    return ProxyError(
        400,
        "missing_audit_header",
        f"The request header {name} is required on this endpoint.",
        REJECTED,
        param=name,
    )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, "request_too_large", f"The request body exceeds {limit} bytes.", REJECTED
    )


def audit_unavailable(reason: str) -> ProxyError:
    return ProxyError(
        503,
        "audit_unavailable",
        f"The audit trail cannot accept records right now ({reason}); retry later.",
        REJECTED,
        type="service_unavailable",
        retryable=True,
    )


def upstream_unreachable(detail: str) -> ProxyError:
    return ProxyError(
        502,
        "upstream_unreachable",
        f"The model server could not be reached: {detail}",
        UPSTREAM_ERROR,
        type="server_error",
        retryable=True,
    )


def upstream_broke(detail: str) -> ProxyError:
    return ProxyError(
        502,
        "upstream_error",
        f"The model server broke off the response: {detail}",
        UPSTREAM_ERROR,
        type="server_error",
        retryable=True,
    )


def upstream_timeout(detail: str) -> ProxyError:
    return ProxyError(
        504,
        "upstream_timeout",
        f"The model server did not answer in time: {detail}",
        UPSTREAM_TIMEOUT,
        type="server_error",
        retryable=True,
    )


def from_upstream_exception(exc: UpstreamError) -> ProxyError:
    """Map an exception from the upstream call to one of ours (the only such mapping)."""
    detail = type(exc).__name__
    if str(exc):
        detail = f"{detail}: {exc}"
    if isinstance(exc, UpstreamTimeout):
        return upstream_timeout(detail)
    if isinstance(exc, UpstreamUnreachable):
        return upstream_unreachable(detail)
    return upstream_broke(detail)
