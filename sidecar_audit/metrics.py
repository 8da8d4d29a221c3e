"""Prometheus metrics, served on their own port (never the public :8000).

Per-request metrics are observed once, when an exchange ends (never per chunk).
The audit path's numbers (spool, shipping) are read from a snapshot at scrape
time by a custom collector, so the spool and shipper keep plain counters and
need no Prometheus code. Every metric lives in the app's own registry: nothing
global, two apps in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Paths vLLM serves; anything else is labelled "other" so a scanner cannot explode cardinality.
KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/rerank",
        "/v1/score",
        "/tokenize",
        "/detokenize",
        "/version",
    }
)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
PUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def path_label(path: str) -> str:
    return path if path in KNOWN_PATHS else "other"


@dataclass(frozen=True)
class AuditSnapshot:
    """The audit path's counters and gauges at one moment."""

    records_spooled: int
    records_shipped: int
    records_dropped: int
    requests_refused: int
    objects_put: int
    put_errors: int
    spool_bytes: int
    spool_segments: int
    oldest_unshipped_age_s: float | None
    quarantined_bytes: int
    spool_failed: bool


class _AuditCollector:
    def __init__(self, snapshot: Callable[[], AuditSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        counters = (
            (
                "llm_audit_records_spooled",
                "Records appended to the on-disk spool.",
                s.records_spooled,
            ),
            ("llm_audit_records_shipped", "Records confirmed in S3.", s.records_shipped),
            (
                "llm_audit_records_dropped",
                "Records lost on purpose (spool full or failed, drop policy).",
                s.records_dropped,
            ),
            (
                "llm_audit_requests_refused",
                "Requests refused with 503 because the audit spool could not take records.",
                s.requests_refused,
            ),
            ("llm_audit_s3_objects_put", "Audit objects written to S3.", s.objects_put),
            ("llm_audit_s3_put_errors", "Failed S3 put attempts (each retried).", s.put_errors),
            (
                "llm_audit_spool_quarantined_bytes",
                "Corrupt spool bytes moved to quarantine at recovery.",
                s.quarantined_bytes,
            ),
        )
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter
        gauges: tuple[tuple[str, str, float], ...] = (
            ("llm_audit_spool_bytes", "Bytes in the spool, not yet shipped.", s.spool_bytes),
            ("llm_audit_spool_segments", "Spool segments on disk.", s.spool_segments),
            (
                "llm_audit_oldest_unshipped_age_seconds",
                "Age of the oldest record not yet in S3 (0 when none).",
                s.oldest_unshipped_age_s or 0.0,
            ),
            (
                "llm_audit_spool_failed",
                "1 when the spool failed (fsync/write error).",
                1 if s.spool_failed else 0,
            ),
        )
        for name, doc, level in gauges:
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], level)
            yield gauge


class Metrics:
    def __init__(self, audit_snapshot: Callable[[], AuditSnapshot]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "llm_sidecar_requests",
            "Proxied requests by path, status and outcome.",
            ("path", "status", "outcome"),
            registry=r,
        )
        self.latency = Histogram(
            "llm_sidecar_request_duration_seconds",
            "Request start to last byte sent.",
            ("path",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llm_sidecar_time_to_first_token_seconds",
            "Request start to the first output token of a stream.",
            ("path",),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llm_sidecar_overhead_seconds",
            "Time the sidecar spends before handing the request to vLLM "
            "(reading the body, checks).",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llm_sidecar_tokens",
            "Tokens by direction (prompt, completion).",
            ("direction",),
            registry=r,
        )
        self.in_flight = Gauge(
            "llm_sidecar_in_flight_requests", "Requests being proxied now.", registry=r
        )
        self.put_latency = Histogram(
            "llm_audit_s3_put_duration_seconds",
            "Duration of S3 put attempts by result.",
            ("result",),
            buckets=PUT_BUCKETS,
            registry=r,
        )
        r.register(_AuditCollector(audit_snapshot))

    def observe_exchange(
        self,
        path: str,
        status: int,
        outcome: str,
        latency_s: float,
        ttft_s: float | None,
        overhead_s: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        label = path_label(path)
        self.requests.labels(label, str(status), outcome).inc()
        self.latency.labels(label).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(label).observe(ttft_s)
        if overhead_s is not None:
            self.overhead.observe(overhead_s)
        if prompt_tokens:
            self.tokens.labels("prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels("completion").inc(completion_tokens)

    def observe_put(self, seconds: float, ok: bool) -> None:
        self.put_latency.labels("ok" if ok else "error").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
