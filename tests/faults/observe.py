"""The operator's instruments, read from a running sidecar: /metrics, /health and its log lines.

One job: turn what an operator would look at into plain values a test can
assert on. Scrapes are parsed with prometheus_client's own text parser, so a
malformed exposition fails here. `log_objects` insists that every log line is
one JSON object.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

_T = TypeVar("_T")


@dataclass(frozen=True)
class Scrape:
    """One /metrics answer: sample values by name and labels, and each family's type."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the labelled series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {ls: v for (n, ls), v in self.samples.items() if n == name}


def scrape(metrics_url: str) -> Scrape:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, types)


def scrape_accounted(metrics_url: str, requests: int) -> Scrape:
    """A scrape once every one of `requests` records was spooled or dropped.

    A client can have its whole answer a moment before the sidecar appends the
    record (the append follows the last byte): counts and log lines are read
    only after this, the scrape first, so they agree.
    """
    return wait_for(
        lambda: scrape(metrics_url),
        lambda s: (
            s.value("llm_audit_records_spooled_total") + s.value("llm_audit_records_dropped_total")
            >= requests
        ),
        f"{requests} records spooled or dropped",
    )


def health(base_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(
    probe: Callable[[], _T], ok: Callable[[_T], bool], what: str, timeout: float = 30.0
) -> _T:
    """Poll `probe` until `ok(value)`; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            last = repr(value)[:500]
            raise AssertionError(f"{what} never happened within {timeout}s; last: {last}")
        time.sleep(0.1)


def log_objects(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every line parsed; fails on the first one that is not exactly one JSON object."""
    objects = []
    for number, line in enumerate(lines, 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"log line {number} is not JSON ({exc}): {line[:300]!r}") from None
        assert isinstance(parsed, dict), f"log line {number} is not an object: {line[:300]!r}"
        objects.append(parsed)
    return objects


def logged(lines: Iterable[str], msg: str) -> list[dict[str, Any]]:
    """The log objects whose message is `msg`."""
    return [o for o in log_objects(lines) if o.get("event") == msg]


def dropped_ids(lines: Iterable[str]) -> list[str]:
    """Request ids of the records the sidecar logged as dropped (spool full or failed)."""
    return [
        o["requestId"]
        for o in log_objects(lines)
        if str(o.get("event", "")).startswith("audit record dropped")
    ]
