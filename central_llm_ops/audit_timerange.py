"""Time ranges for audit queries, as bounds on the `createdAt` sort key. Pure functions.

`createdAt` is `<timestamp>#<requestId>` with the timestamp in the canonical
form `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so string order is time order. A range
[since, until) becomes `createdAt BETWEEN <since> AND <until>`: an item stamped
exactly `until` sorts after the bare `until` string (its `#...` suffix makes it
longer), so the upper end is exclusive without any extra condition.

Accepted moments: ISO-8601 dates or datetimes (naive means UTC), `now`, and
durations before now such as `90s`, `30m`, `24h`, `7d`, `2w`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(text: str, now: datetime) -> datetime:
    """A point in time from an ISO-8601 string, `now`, or a duration ago; ValueError else."""
    value = text.strip()
    if value.lower() == "now":
        return now
    duration = DURATION_RE.match(value.lower())
    if duration:
        return now - timedelta(seconds=int(duration[1]) * UNIT_SECONDS[duration[2]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO-8601, 'now' or e.g. 24h, 7d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sort_key_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True)
class TimeRange:
    """[since, until) in UTC."""

    since: datetime
    until: datetime

    @classmethod
    def parse(cls, since: str, until: str, now: datetime | None = None) -> TimeRange:
        moment = now or datetime.now(UTC)
        start, end = parse_moment(since, moment), parse_moment(until, moment)
        if start >= end:
            raise ValueError("--since must be before --until")
        return cls(start, end)

    def bounds(self) -> tuple[str, str]:
        """(low, high) for `createdAt BETWEEN :low AND :high`."""
        return sort_key_text(self.since), sort_key_text(self.until)

    def contains(self, created_at: str) -> bool:
        low, high = self.bounds()
        return low <= created_at <= high
