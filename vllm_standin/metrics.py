"""`GET /metrics`: the engine metrics vLLM 0.33 exports, under its names and types.

Names, types, label names and bucket boundaries are vLLM 0.33.0's
(`vllm/v1/metrics/loggers.py`, `vllm/v1/metrics/buckets.py`; file:line in
METRICS.md beside this file), so a dashboard or collector built against the
stand-in works against vLLM. What the values mean here:

- measured: requests running (generating requests in flight), end-to-end
  latency, generated tokens (the usage of a JSON answer; for a stream, the
  token events it sent), finished requests by reason (`stop`, or `abort` when
  the client left);
- modelled: the stand-in has no scheduler and no KV cache. Requests beyond
  vLLM's default `max_num_seqs` (256) count as waiting, and KV-cache use is
  the share of those 256 sequence slots in use;
- scheduled: time to first token and inter-token latency are the delays the
  stand-in's pace applies (`--ttft-ms`, `--itl-ms`); ITL is observed once per
  token after the first, as vLLM observes it per decode step.

Each request is observed once, when its handler returns (never per event).
Every metric lives in the application's own registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vllm_standin.runtime import ENTRY, RUNTIME

GENERATING = frozenset({"/v1/chat/completions", "/v1/completions"})
MAX_NUM_SEQS = 256  # vLLM 0.33's default for the OpenAI server on a GPU (arg_utils.py)
LABELS = ("model_name", "engine")
# vllm/v1/metrics/buckets.py
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def one_two_five(limit: int) -> tuple[float, ...]:
    """vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, ... up to `limit`."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


@dataclass
class EngineMetrics:
    model: str
    ttft_s: float
    itl_s: float
    max_model_len: int
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    generating: int = 0

    def __post_init__(self) -> None:
        r, labels = self.registry, (self.model, "0")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=r, multiprocess_mode="mostrecent")

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        ).labels(*labels)
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        ).labels(*labels)
        self.kv_cache = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        ).labels(*labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", LABELS, registry=r
        ).labels(*labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*LABELS, "finished_reason"),
            registry=r,
        )
        self.success = {reason: success.labels(*labels, reason) for reason in FINISHED_REASONS}
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        ).labels(*labels)
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        ).labels(*labels)
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        ).labels(*labels)
        self.generated = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            one_two_five(self.max_model_len),
        ).labels(*labels)
        self._levels()

    def _levels(self) -> None:
        running = min(self.generating, MAX_NUM_SEQS)
        self.running.set(running)
        self.waiting.set(self.generating - running)
        self.kv_cache.set(running / MAX_NUM_SEQS)

    def started(self) -> None:
        self.generating += 1
        self._levels()

    def finished(self, seconds: float, tokens: int, aborted: bool) -> None:
        self.generating -= 1
        self._levels()
        self.e2e.observe(seconds)
        self.success["abort" if aborted else "stop"].inc()
        if tokens > 0:
            self.generation_tokens.inc(tokens)
            self.generated.observe(tokens)
            self.ttft.observe(self.ttft_s)
            for _ in range(tokens - 1):
                self.itl.observe(self.itl_s)


METRICS = web.AppKey("standin_metrics", EngineMetrics)


def _stream_tokens(events: int, body: bytes, chat: bool) -> int:
    """Token events of a stream: all `data:` events less `[DONE]`, the chat role chunk
    of each choice and the usage chunk (the stand-in's framing, chat_wire.py)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(request, dict):
        return 0
    requested = request.get("n")
    n = requested if isinstance(requested, int) else 1
    options = request.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return max(events - 1 - (n if chat else 0) - (1 if usage else 0), 0)


def _answer_tokens(response: web.StreamResponse) -> int:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return 0
    try:
        usage = orjson.loads(body).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0


@web.middleware
async def observe_engine(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "POST" or request.path not in GENERATING:
        return await handler(request)
    metrics = request.app[METRICS]
    body = await request.read()  # already read (and kept) by the journal middleware
    started = time.monotonic()
    metrics.started()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        return response
    finally:
        entry = request.get(ENTRY)
        aborted = response is None or (entry is not None and entry.outcome == "aborted")
        if response is not None and response.status != 200:
            tokens = 0
        elif entry is not None and entry.stream:
            chat = request.path == "/v1/chat/completions"
            tokens = _stream_tokens(entry.events_sent, body, chat)
        else:
            tokens = 0 if response is None else _answer_tokens(response)
        metrics.finished(time.monotonic() - started, tokens, aborted)


async def scrape(request: web.Request) -> web.Response:
    """`GET /metrics`: vLLM's engine metrics under their 0.33 names and types."""
    return web.Response(
        body=generate_latest(request.app[METRICS].registry),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def install(app: web.Application) -> None:
    """Observe generating requests for `GET /metrics` (call before the app starts)."""
    options = app[RUNTIME].options
    app[METRICS] = EngineMetrics(
        options.model, options.ttft_ms / 1000, options.itl_ms / 1000, options.max_model_len
    )
    app.middlewares.append(observe_engine)
