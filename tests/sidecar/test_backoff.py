"""The shared capped exponential back-off (shipper retries, task-protection cool-downs)."""

from __future__ import annotations

from sidecar_audit.backoff import exponential


def test_doubles_from_the_base_up_to_the_cap() -> None:
    assert [exponential(n, 30.0, 300.0) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]
    assert [exponential(n, 0.5, 30.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_days_of_failures_never_overflow() -> None:
    # 30 s * 2**(n-1) as a float overflows past n ~ 1025: a task-protection driver whose
    # agent failed for ~85 h (a round every 5 min) would have died of OverflowError.
    assert exponential(100_000, 30.0, 300.0) == 300.0
