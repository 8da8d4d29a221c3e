"""The sidecar's own errors: a small closed set, each with its status, outcome and retryability.

Clients see them in the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}`; the audit record sees the
outcome. Exceptions raised by the upstream client (`upstream.py`) while talking
to vLLM are mapped to these in exactly one place, `from_upstream_exception`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .upstream import UpstreamBusy, UpstreamError, UpstreamTimeout, UpstreamUnreachable

REJECTED = "rejected"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_TIMEOUT = "upstream_timeout"
CLIENT_DISCONNECTED = "client_disconnected"
SIDECAR_ERROR = "sidecar_error"
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


def decoded_body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        "request_too_large",
        f"The request body exceeds {limit} bytes once its Content-Encoding is undone.",
        REJECTED,
    )


def python_only_json(why: str) -> ProxyError:
    return ProxyError(
        400,
        "unsupported_json",
        f"The request body uses {why}; send standard JSON (RFC 8259) in UTF-8.",
        REJECTED,
    )


def body_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        408,
        "request_timeout",
        f"The request body did not arrive within {seconds:g} s.",
        REJECTED,
        retryable=True,
    )


def repeated_audit_header(name: str) -> ProxyError:
    return ProxyError(
        400,
        "repeated_audit_header",
        f"The request header {name} must be sent once.",
        REJECTED,
        param=name,
    )


def bad_audit_header(name: str, why: str) -> ProxyError:
    return ProxyError(
        400, "invalid_audit_header", f"The request header {name} {why}.", REJECTED, param=name
    )


def upstream_busy(detail: str) -> ProxyError:
    return ProxyError(
        503,
        "upstream_busy",
        f"The model server has no free connection: {detail}",
        REJECTED,
        type="service_unavailable",
        retryable=True,
    )


def sidecar_failure(detail: str) -> ProxyError:
    return ProxyError(
        500,
        "sidecar_error",
        f"The audit proxy failed ({detail}); the request was recorded.",
        SIDECAR_ERROR,
        type="server_error",
        retryable=True,
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
    if isinstance(exc, UpstreamBusy):
        return upstream_busy(detail)
    if isinstance(exc, UpstreamTimeout):
        return upstream_timeout(detail)
    if isinstance(exc, UpstreamUnreachable):
        return upstream_unreachable(detail)
    return upstream_broke(detail)


@dataclass
class Facts:
    """What happened to an exchange, as the proxy saw it; `outcome_of` judges them."""

    status: int = 0
    rejected: ProxyError | None = None  # the sidecar answered itself, vLLM never saw it
    upstream: ProxyError | None = None  # talking to vLLM failed
    client_gone: str | None = None  # why the client stopped receiving
    defect: str | None = None  # an exception of ours (its type name)
    shutdown: bool = False  # the process stopped before the exchange ended
    stream_error: Any = None  # an error event inside vLLM's stream


def outcome_of(facts: Facts) -> tuple[str, dict[str, str] | None]:
    """The record's `outcome` and `error` (the only place they are decided). Pure.

    First match wins: our refusal; a defect of ours; vLLM failing; the client
    leaving; a stop of the process; an error inside a stream; an error status.
    """
    if facts.rejected is not None:
        return facts.rejected.outcome, facts.rejected.as_record_error()
    if facts.defect is not None:
        return SIDECAR_ERROR, {"type": "sidecar_error", "message": facts.defect}
    if facts.upstream is not None:
        return facts.upstream.outcome, facts.upstream.as_record_error()
    if facts.client_gone is not None:
        return CLIENT_DISCONNECTED, {"type": "client_disconnected", "message": facts.client_gone}
    if facts.shutdown:
        return SIDECAR_ERROR, {
            "type": "sidecar_shutdown",
            "message": "the sidecar stopped before the exchange ended",
        }
    if facts.stream_error is not None:
        return UPSTREAM_ERROR, {"type": "stream_error", "message": _message(facts.stream_error)}
    if facts.status >= 500:
        return UPSTREAM_ERROR, {
            "type": "upstream_status",
            "message": f"the model server answered {facts.status}",
        }
    return COMPLETED, None


def _message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:500]
    return str(error)[:500]
