"""What the stand-in saw: the last N requests as received, and counters since start.

Invariants: an entry is created when a request arrives (before its handler runs) and
updated in place until the response ends, so a hung request is visible as
`in_progress`; outcomes are `in_progress`, `completed` (the whole response was
written, whatever its status) and `aborted` (the client went away first). Counters
are never reset by `clear()`; only the entry list is. Prompt text is kept here only
because tests read it back; nothing in this module logs.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
ABORTED = "aborted"


@dataclass(slots=True)
class Entry:
    """One received request and, as it progresses, what was sent back."""

    seq: int
    received_at: float
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body_bytes: int
    body_sha256: str
    body_json: object
    scenario: str = ""
    stream: bool = False
    status: int | None = None
    outcome: str = IN_PROGRESS
    events_sent: int = 0
    comments_sent: int = 0
    response_bytes: int = 0
    finished_at: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "received_at": self.received_at,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": _header_map(self.headers),
            "header_list": [list(pair) for pair in self.headers],
            "body_bytes": self.body_bytes,
            "body_sha256": self.body_sha256,
            "body_json": self.body_json,
            "scenario": self.scenario,
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome,
            "events_sent": self.events_sent,
            "comments_sent": self.comments_sent,
            "response_bytes": self.response_bytes,
            "finished_at": self.finished_at,
        }


@dataclass(slots=True)
class Stats:
    requests: int = 0
    in_flight: int = 0
    completed: int = 0
    aborted: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    admin_hits: dict[str, int] = field(default_factory=dict)  # operator/dev route -> hits

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "completed": self.completed,
            "aborted": self.aborted,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
            "admin_hits": dict(self.admin_hits),
        }


def _header_map(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Headers keyed by name as received; a repeated name's values joined with ", "."""
    merged: dict[str, str] = {}
    for name, value in pairs:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


def _parsed(body: bytes) -> object:
    """The body as JSON for the journal's read-back; None when it is not JSON we can echo.

    Bodies nested deeper than orjson encodes (255 levels; it decodes up to 1024)
    are kept as digests only, so one odd request cannot break the read-back.
    """
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
        orjson.dumps(parsed)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    return parsed


@dataclass(slots=True)
class Journal:
    """A bounded log of requests plus counters; `size == 0` keeps counters only."""

    size: int
    stats: Stats = field(default_factory=Stats)
    _entries: deque[Entry] = field(init=False)
    _seq: int = 0

    def __post_init__(self) -> None:
        self._entries = deque(maxlen=max(self.size, 1))

    def open(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> Entry:
        self._seq += 1
        self.stats.requests += 1
        self.stats.in_flight += 1
        keep = self.size > 0
        entry = Entry(
            seq=self._seq,
            received_at=time.time(),
            method=method,
            path=path,
            query=query,
            headers=list(headers) if keep else [],
            body_bytes=len(body),
            body_sha256=hashlib.sha256(body).hexdigest() if keep else "",
            body_json=_parsed(body) if keep else None,
        )
        if keep:
            self._entries.append(entry)
        return entry

    def mark_stream(self, entry: Entry) -> None:
        entry.stream = True
        self.stats.streams_started += 1

    def close(self, entry: Entry, outcome: str) -> None:
        """Record how the exchange ended; the first call wins."""
        if entry.outcome != IN_PROGRESS:
            return
        entry.outcome = outcome
        entry.finished_at = time.time()
        stats = self.stats
        stats.in_flight -= 1
        if outcome == ABORTED:
            stats.aborted += 1
            if entry.stream:
                stats.streams_aborted += 1
        else:
            stats.completed += 1
            if entry.stream:
                stats.streams_completed += 1

    def entries(self, path: str | None = None) -> list[Entry]:
        return [e for e in self._entries if path is None or e.path == path]

    def clear(self) -> None:
        self._entries.clear()
