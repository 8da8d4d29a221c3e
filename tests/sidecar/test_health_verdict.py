"""`/health`'s verdict, row by row: 503 only when the task cannot serve audited traffic now."""

from __future__ import annotations

import pytest

from sidecar_audit.health import AuditHealth, HealthLimits, verdict

LIMITS = HealthLimits(max_spool_bytes=1000, max_ship_lag_s=300.0)
CALM = AuditHealth(failed=None, full=False, spool_bytes=0, oldest_unshipped_age_s=None,
                   records_dropped=0)  # fmt: skip


@pytest.mark.parametrize(
    ("upstream_ok", "audit", "status", "problem", "warning"),
    [
        (True, CALM, 200, None, None),
        (False, CALM, 503, "vllm: down", None),
        (True, AuditHealth("fsync failed", False, 0, None, 0), 503, "audit spool failed", None),
        (True, AuditHealth(None, True, 10, 1.0, 0), 503, "audit spool full", None),
        (True, AuditHealth(None, False, 5000, 1.0, 0), 200, None, "audit backlog 5000"),
        (True, AuditHealth(None, False, 10, 3600.0, 0), 200, None, "audit shipping lags"),
        (True, AuditHealth(None, False, 10**9, 86400.0, 7), 200, None, "audit backlog"),
    ],
    ids=["ok", "vllm-down", "spool-failed", "spool-full", "backlog", "lag", "s3-down-for-a-day"],
)
def test_verdict(
    upstream_ok: bool, audit: AuditHealth, status: int, problem: str | None, warning: str | None
) -> None:
    got_status, body = verdict(upstream_ok, "ok" if upstream_ok else "down", audit, LIMITS)
    assert got_status == status
    assert body["status"] == ("ok" if status == 200 else "unhealthy")
    if problem is None:
        assert body["problems"] == []
    else:
        assert any(p.startswith(problem) for p in body["problems"]), body
    if warning is None:
        assert body["warnings"] == []
    else:
        assert any(w.startswith(warning) for w in body["warnings"]), body
    assert body["audit"]["spoolBytes"] == audit.spool_bytes
