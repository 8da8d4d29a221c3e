"""Small, dependency-free statistics for the benchmark: percentiles, medians, safe ratios.

Invariants: every function accepts empty input and returns None instead of
raising, so one failed cell leaves a hole in the report rather than ending the
run; percentiles interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None."""
    present = [v for v in values if v is not None]
    return percentile(present, 50.0)


def spread(values: Iterable[float | None]) -> float | None:
    """max - min of the values that are not None (the noise band of repeated runs)."""
    present = [v for v in values if v is not None]
    return max(present) - min(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def per_thousand(amount: float | None, count: int) -> float | None:
    """`amount` per 1,000 of `count` (CPU seconds per 1,000 events)."""
    return None if amount is None or count <= 0 else amount * 1000.0 / count
