"""Prometheus metrics, served on their own port (never the public :8000).

Per-request metrics are observed once, when an exchange ends (never per chunk).
The inference histograms (`llm_inference_*`: TTFT, inter-token latency,
end-to-end latency, output tokens per second) cover the generating routes
only and are labelled by `model`, `route` and `outcome`, each from a closed
set: the configured model ids (`METRICS_MODELS`) plus `other`, the
generating routes, the proxy's outcomes. User, project and request ids are
never labels.
The audit path's numbers (spool, shipping) are read from a snapshot at scrape
time by a custom collector, so the spool and shipper keep plain counters and
need no Prometheus code. Every metric lives in the app's own registry: nothing
global, two apps in one process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
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
# Routes that generate tokens: the inference histograms' `route` label.
GENERATION_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
OTHER = "other"
EMF_NAMESPACE = "CentralLLM/Inference"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# vLLM 0.33's inter-token buckets (vllm/v1/metrics/buckets.py), so both views line up.
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 20)
TOKENS_PER_S_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)
PUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def path_label(path: str) -> str:
    return path if path in KNOWN_PATHS else OTHER


def model_label(model: object, known: frozenset[str]) -> str:
    return model if isinstance(model, str) and model in known else OTHER


@dataclass(frozen=True)
class Inference:
    """One generating exchange's timings as the audit path saw them.

    Inter-token latency is the stream's mean gap: (end - first token) /
    (completion tokens - 1). The end is the exchange's end: vLLM sends the
    usage chunk and `[DONE]` in the same step as the last token, so the
    difference is the sidecar's own write time. Tokens per second are the
    completion tokens over the whole request (what the client experienced).
    """

    ttft_s: float | None
    itl_s: float | None
    latency_s: float
    tokens_per_s: float | None

    @classmethod
    def of(cls, latency_s: float, ttft_s: float | None, completion_tokens: int | None) -> Inference:
        tokens = completion_tokens or 0
        itl = None
        if ttft_s is not None and tokens >= 2 and latency_s > ttft_s:
            itl = (latency_s - ttft_s) / (tokens - 1)
        rate = tokens / latency_s if tokens > 0 and latency_s > 0 else None
        return cls(ttft_s, itl, latency_s, rate)


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


class _InferenceHistograms:
    """The four `llm_inference_*` histograms; labelled children cached per label triple."""

    LABELS = ("model", "route", "outcome")

    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, self.LABELS, buckets=buckets, registry=registry)

        self._families = (
            histogram(
                "llm_inference_time_to_first_token_seconds",
                "Request start to the first output token (streams).",
                TTFT_BUCKETS,
            ),
            histogram(
                "llm_inference_inter_token_latency_seconds",
                "Mean gap between output tokens of a stream.",
                ITL_BUCKETS,
            ),
            histogram(
                "llm_inference_e2e_latency_seconds",
                "Request start to last byte of a generating request.",
                LATENCY_BUCKETS,
            ),
            histogram(
                "llm_inference_output_tokens_per_second",
                "Completion tokens over the request's whole duration.",
                TOKENS_PER_S_BUCKETS,
            ),
        )
        self._children: dict[tuple[str, str, str], tuple[Histogram, ...]] = {}

    def observe(self, labels: tuple[str, str, str], timing: Inference) -> None:
        children = self._children.get(labels)
        if children is None:
            children = tuple(family.labels(*labels) for family in self._families)
            self._children[labels] = children
        ttft, itl, e2e, rate = children
        e2e.observe(timing.latency_s)
        if timing.ttft_s is not None:
            ttft.observe(timing.ttft_s)
        if timing.itl_s is not None:
            itl.observe(timing.itl_s)
        if timing.tokens_per_s is not None:
            rate.observe(timing.tokens_per_s)


_Family = TypeVar("_Family", Counter, Histogram)


def _child(children: dict[tuple[str, ...], _Family], family: _Family, *labels: str) -> _Family:
    """`family.labels(*labels)`, built once per label values and kept in `children`."""
    child = children.get(labels)
    if child is None:
        child = children[labels] = family.labels(*labels)
    return child


ERROR_OUTCOMES = frozenset({"upstream_error", "upstream_timeout", "sidecar_error"})


def is_error(status: str, outcome: str) -> bool:
    """A failure of the service (not the client's): a 5xx, or the upstream or we failed."""
    return status.startswith("5") or outcome in ERROR_OUTCOMES


@dataclass
class _Totals:
    """Cumulative figures of the inference histograms at one EMF report."""

    ttft_buckets: dict[float, float]
    requests: float
    errors: float


def _inference_totals(registry_metrics: Iterable[Metric]) -> _Totals:
    buckets: dict[float, float] = {}
    requests = errors = 0.0
    for family in registry_metrics:
        for sample in family.samples:
            if sample.name == "llm_inference_time_to_first_token_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif (
                sample.name == "llm_sidecar_requests_total"
                and sample.labels["path"] in GENERATION_PATHS
            ):
                requests += sample.value
                if is_error(sample.labels["status"], sample.labels["outcome"]):
                    errors += sample.value
    return _Totals(buckets, requests, errors)


def ttft_distribution(
    before: dict[float, float], now: dict[float, float]
) -> tuple[list[float], list[float]]:
    """EMF `Values`/`Counts` of the TTFTs observed between two cumulative snapshots:
    each bucket's count at its upper bound (the last finite bound for +Inf), so
    CloudWatch's percentiles are the histogram's, at bucket resolution."""
    values: list[float] = []
    counts: list[float] = []
    previous = 0.0
    finite = max((le for le in now if le != float("inf")), default=0.0)
    for le in sorted(now):
        cumulative = now[le] - before.get(le, 0.0)
        in_bucket = cumulative - previous
        previous = cumulative
        if in_bucket > 0:
            values.append(finite if le == float("inf") else le)
            counts.append(in_bucket)
    return values, counts


class Metrics:
    def __init__(
        self,
        audit_snapshot: Callable[[], AuditSnapshot],
        models: frozenset[str] = frozenset(),
    ) -> None:
        self.models = models
        r = self.registry = CollectorRegistry()
        # The process's own CPU, memory and garbage-collector passes (process_*,
        # python_gc_*): a GC pass stops every stream on the loop (bench/README.md).
        r.register(PROCESS_COLLECTOR)
        r.register(GC_COLLECTOR)
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
        self.inference = _InferenceHistograms(r)
        # Labelled children, built once per label value (`labels()` costs more than the
        # observation itself, and this runs before every answer's last bytes).
        self._request_counts: dict[tuple[str, ...], Counter] = {}
        self._latencies: dict[tuple[str, ...], Histogram] = {}
        self._ttfts: dict[tuple[str, ...], Histogram] = {}
        self._prompt_tokens = self.tokens.labels("prompt")
        self._completion_tokens = self.tokens.labels("completion")
        self._reported = _Totals({}, 0.0, 0.0)
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
        _child(self._request_counts, self.requests, label, str(status), outcome).inc()
        _child(self._latencies, self.latency, label).observe(latency_s)
        if ttft_s is not None:  # a child only once observed: no empty series per path
            _child(self._ttfts, self.ttft, label).observe(ttft_s)
        if overhead_s is not None:
            self.overhead.observe(overhead_s)
        if prompt_tokens:
            self._prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self._completion_tokens.inc(completion_tokens)

    def observe_inference(
        self,
        path: str,
        model: object,
        outcome: str,
        latency_s: float,
        ttft_s: float | None,
        completion_tokens: int | None,
    ) -> None:
        """The inference histograms, for generating routes only."""
        if path not in GENERATION_PATHS:
            return
        labels = (model_label(model, self.models), path, outcome)
        self.inference.observe(labels, Inference.of(latency_s, ttft_s, completion_tokens))

    def inference_emf(self, service_name: str) -> dict[str, object] | None:
        """One EMF line with this interval's inference figures (the TTFT p99 and
        error-rate alarms read them); None when nothing was served since the last."""
        now = _inference_totals(
            m
            for m in self.registry.collect()
            if m.name in ("llm_inference_time_to_first_token_seconds", "llm_sidecar_requests")
        )
        before, self._reported = self._reported, now
        requests = now.requests - before.requests
        if requests <= 0:
            return None
        values, counts = ttft_distribution(before.ttft_buckets, now.ttft_buckets)
        metrics: list[dict[str, str]] = [
            {"Name": "InferenceRequests", "Unit": "Count"},
            {"Name": "InferenceErrors", "Unit": "Count"},
        ]
        line: dict[str, object] = {
            "ServiceName": service_name,
            "InferenceRequests": requests,
            "InferenceErrors": now.errors - before.errors,
        }
        if values:
            metrics.append({"Name": "TimeToFirstToken", "Unit": "Seconds"})
            line["TimeToFirstToken"] = {"Values": values, "Counts": counts}
        line["_aws"] = {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {"Namespace": EMF_NAMESPACE, "Dimensions": [["ServiceName"]], "Metrics": metrics}
            ],
        }
        return line

    def observe_put(self, seconds: float, ok: bool) -> None:
        self.put_latency.labels("ok" if ok else "error").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
