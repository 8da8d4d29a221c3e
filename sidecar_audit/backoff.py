"""Capped exponential back-off, the one computation the sidecar's retry loops share.

`exponential(attempt, base, cap)` is base, 2×base, 4×base, … never above cap, for
attempt 1, 2, 3, …; the exponent stops growing at 32, so a loop that retries for
days never overflows a float. Callers add jitter where many of them could retry
in step (the shipper); the task-protection driver is alone and stays exact.
"""

from __future__ import annotations


def exponential(attempt: int, base_s: float, cap_s: float) -> float:
    return min(cap_s, base_s * 2 ** min(attempt - 1, 32))
