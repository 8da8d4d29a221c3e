"""errors.outcome_of: the one place a record's outcome and error are decided, row by row.

First match wins: our refusal; a defect of ours; vLLM failing; the client
leaving; a stop of the process; an error inside a stream; an error status.
"""

from __future__ import annotations

import pytest

from sidecar_audit import errors
from sidecar_audit.errors import Facts, outcome_of

REFUSED = errors.missing_audit_header("x-llm-user")
BROKEN = errors.upstream_broke("UpstreamBroken: cut")
TIMED_OUT = errors.upstream_timeout("UpstreamTimeout: 600 s")


@pytest.mark.parametrize(
    ("facts", "outcome", "error_type"),
    [
        (Facts(status=200), "completed", None),
        (Facts(status=404), "completed", None),  # vLLM's own 4xx: answered as vLLM would
        (Facts(status=503), "upstream_error", "upstream_status"),
        (Facts(status=400, rejected=REFUSED), "rejected", "missing_audit_header"),
        (Facts(status=500, defect="KeyError"), "sidecar_error", "sidecar_error"),
        (Facts(status=502, upstream=BROKEN), "upstream_error", "upstream_error"),
        (Facts(status=504, upstream=TIMED_OUT), "upstream_timeout", "upstream_timeout"),
        (Facts(status=200, client_gone="gone"), "client_disconnected", "client_disconnected"),
        (Facts(status=200, shutdown=True), "sidecar_error", "sidecar_shutdown"),
        (Facts(status=200, stream_error={"message": "oom"}), "upstream_error", "stream_error"),
        # precedence: a refusal beats everything, a defect beats vLLM and the client
        (Facts(rejected=REFUSED, defect="X", client_gone="x"), "rejected", "missing_audit_header"),
        (Facts(defect="X", upstream=BROKEN, client_gone="gone"), "sidecar_error", "sidecar_error"),
        (Facts(upstream=BROKEN, client_gone="gone"), "upstream_error", "upstream_error"),
        (Facts(status=200, client_gone="gone", stream_error={"m": 1}), "client_disconnected",
         "client_disconnected"),
        (Facts(status=500, shutdown=True), "sidecar_error", "sidecar_shutdown"),
    ],
)  # fmt: skip
def test_outcome_table(facts: Facts, outcome: str, error_type: str | None) -> None:
    got_outcome, error = outcome_of(facts)
    assert got_outcome == outcome
    assert (None if error is None else error["type"]) == error_type


def test_a_stream_error_message_is_kept_and_bounded() -> None:
    _, error = outcome_of(Facts(status=200, stream_error={"message": "x" * 2000}))
    assert error is not None and error["message"] == "x" * 500
    _, error = outcome_of(Facts(status=200, stream_error="plain text"))
    assert error is not None and error["message"] == "plain text"
