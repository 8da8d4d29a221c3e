"""One cell of the matrix: one running system, one scenario, one repeat — load it and measure.

Timeline (all `time.monotonic()`): generators start, their workers begin
staggered at `start_at`; the warm-up lets the closed loop reach a steady state;
the measurement window [`window_from`, `window_until`) is what every number
describes; then no new requests start and those in flight are read to the end.

What is measured, and how:
- requests/s, events/s, TTFT and total latency: from the generators (window rules
  in `workload.py`);
- CPU: /proc utime+stime of the system's process tree at the window's two edges
  (never wall-clock), likewise for the upstream stand-in and for the generators,
  so readers can see whether the generator was a bottleneck;
- memory: the tree's RSS sampled every `rss_every_s` from before the load until
  the drain ends (peak), and at the window's edges (start/end, for the soak).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import proctree, stats
from bench.children import Child, python_module, repo_pythonpath
from bench.monitor import RssMonitor
from bench.target import Target
from bench.workload import GeneratorResult, Workload

BODY_TEMPLATE = (
    '{{"model":"{model}","messages":[{{"role":"user","content":"{prompt}"}}],"stream":{stream}}}'
)
PROMPT = "Summarise the benefits of audited LLM endpoints in one paragraph."
GENERATOR_START_S = 1.5  # time for the generator processes to import and connect


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    duration_s: float
    stagger_s: float
    drain_s: float
    request_timeout_s: float


@dataclass
class CellMeasure:
    duration_s: float
    requests_started: int
    completed: int
    events: int
    body_bytes: int
    latency_s: list[float]
    ttft_s: list[float]
    errors: dict[str, int]
    unfinished: int
    responded_ids: list[str]
    cpu_s: float | None
    upstream_cpu_s: float
    loadgen_cpu_s: float
    rss_idle_bytes: int
    rss_start_bytes: int
    rss_end_bytes: int
    rss_peak_bytes: int
    rss_series: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The per-cell numbers of the report (everything but the raw samples)."""
        ms = 1000.0
        p = stats.percentile

        def scaled(value: float | None) -> float | None:
            return None if value is None else value * ms

        return {
            "duration_s": self.duration_s,
            "requests_started": self.requests_started,
            "completed": self.completed,
            "events": self.events,
            "body_bytes": self.body_bytes,
            "rps": self.completed / self.duration_s,
            "events_per_s": self.events / self.duration_s,
            "ttft_p50_ms": scaled(p(self.ttft_s, 50)),
            "ttft_p99_ms": scaled(p(self.ttft_s, 99)),
            "latency_p50_ms": scaled(p(self.latency_s, 50)),
            "latency_p99_ms": scaled(p(self.latency_s, 99)),
            "cpu_s": self.cpu_s,
            "cpu_s_per_1k_events": stats.per_thousand(self.cpu_s, self.events),
            "cpu_ms_per_request": stats.per_thousand(self.cpu_s, self.completed),
            "upstream_cpu_s": self.upstream_cpu_s,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "rss_idle_mb": self.rss_idle_bytes / 2**20,
            "rss_start_mb": self.rss_start_bytes / 2**20,
            "rss_end_mb": self.rss_end_bytes / 2**20,
            "rss_peak_mb": self.rss_peak_bytes / 2**20,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "unfinished": self.unfinished,
        }


def request_body(model: str, stream: bool) -> str:
    return BODY_TEMPLATE.format(model=model, prompt=PROMPT, stream="true" if stream else "false")


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _split(concurrency: int, generators: int) -> list[list[int]]:
    count = max(1, min(generators, concurrency))
    return [list(range(g, concurrency, count)) for g in range(count)]


def run_cell(
    target: Target,
    upstream_pid: int,
    scenario: Scenario,
    timing: Timing,
    *,
    generators: int,
    workdir: Path,
    log_dir: Path,
    cell_id: str,
    rss_every_s: float,
    keep_rss_series: bool = False,
    at_window_open: Callable[[float], None] | None = None,
) -> CellMeasure:
    """Drive `scenario` through `target` and measure it (see the module docstring)."""
    monitor = RssMonitor(target.pids, rss_every_s, keep_rss_series).start()
    rss_idle = monitor.sample_now()
    start_at = time.monotonic() + GENERATOR_START_S
    window_from = start_at + timing.warmup_s
    window_until = window_from + timing.duration_s
    children: list[tuple[Child, Path]] = []
    for g, workers in enumerate(_split(scenario.concurrency, generators)):
        workload = Workload(
            host=target.host,
            port=target.port,
            path="/v1/chat/completions",
            body=request_body(target.model, scenario.stream),
            headers=list(target.headers),
            stream=scenario.stream,
            workers=workers,
            total_workers=scenario.concurrency,
            id_prefix=f"{cell_id}-g{g}",
            start_at=start_at,
            stagger_s=timing.stagger_s,
            window_from=window_from,
            window_until=window_until,
            drain_s=timing.drain_s,
            request_timeout_s=timing.request_timeout_s,
        )
        spec, out = workdir / f"{cell_id}-g{g}.json", workdir / f"{cell_id}-g{g}.result.json"
        workload.dump(spec)
        argv = python_module("bench.loadgen", str(spec), str(out))
        child = Child(f"loadgen-{cell_id}-g{g}", argv, log_dir=log_dir, env=repo_pythonpath())
        children.append((child, out))
    gen_pids = [child.pid for child, _ in children]
    try:
        _sleep_until(window_from)
        cpu0 = _cpu(target.pids)
        up0, gen0 = proctree.cpu_seconds([upstream_pid]), proctree.cpu_seconds(gen_pids)
        rss_start = monitor.sample_now()
        if at_window_open is not None:
            at_window_open(timing.duration_s)
        _sleep_until(window_until)
        cpu1 = _cpu(target.pids)
        up1, gen1 = proctree.cpu_seconds([upstream_pid]), proctree.cpu_seconds(gen_pids)
        rss_end = monitor.sample_now()
        results = [_collect(child, out, timing) for child, out in children]
    finally:
        for child, _ in children:
            child.stop(grace_s=5)
        monitor.stop()
    merged = _merge(results)
    return CellMeasure(
        duration_s=timing.duration_s,
        requests_started=merged.requests_started,
        completed=merged.completed,
        events=merged.events,
        body_bytes=merged.body_bytes,
        latency_s=merged.latency_s,
        ttft_s=merged.ttft_s,
        errors=merged.errors,
        unfinished=merged.unfinished,
        responded_ids=merged.responded_ids,
        cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        upstream_cpu_s=up1 - up0,
        loadgen_cpu_s=gen1 - gen0,
        rss_idle_bytes=rss_idle,
        rss_start_bytes=rss_start,
        rss_end_bytes=rss_end,
        rss_peak_bytes=monitor.peak_bytes,
        rss_series=monitor.series,
    )


def _cpu(roots: tuple[int, ...]) -> float | None:
    return proctree.sample(roots).cpu_s if roots else None


def _collect(child: Child, out: Path, timing: Timing) -> GeneratorResult:
    child.wait(timeout=timing.drain_s + 30)
    if child.popen.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"{child.name} failed with exit code {child.popen.returncode}:\n{child.log_tail()}"
        )
    return GeneratorResult.load(out)


def _merge(results: list[GeneratorResult]) -> GeneratorResult:
    merged = GeneratorResult()
    for r in results:
        merged.requests_started += r.requests_started
        merged.responded_ids.extend(r.responded_ids)
        merged.completed += r.completed
        merged.events += r.events
        merged.body_bytes += r.body_bytes
        merged.latency_s.extend(r.latency_s)
        merged.ttft_s.extend(r.ttft_s)
        merged.unfinished += r.unfinished
        for kind, count in r.errors.items():
            merged.errors[kind] = merged.errors.get(kind, 0) + count
    return merged
