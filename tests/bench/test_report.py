"""Turning cells into rows, per-repeat deltas, ratios and targets; summarising py-spy stacks."""

from __future__ import annotations

from typing import Any

import pytest

from bench.cli import build_plan, parse_args
from bench.profiling import summarise as summarise_profile
from bench.report import render, summarise, targets
from bench.stats import percentile


def cell(system: str, scenario: str, repeat: int, valid: bool = True, **metrics: Any) -> dict:
    base = {
        "rps": 10.0,
        "events_per_s": 100.0,
        "ttft_p50_ms": 50.0,
        "ttft_p99_ms": 60.0,
        "latency_p50_ms": 1000.0,
        "latency_p99_ms": 1100.0,
        "cpu_s_per_1k_events": None,
        "cpu_ms_per_request": None,
        "rss_peak_mb": 0.0,
        "rss_start_mb": 0.0,
        "rss_end_mb": 0.0,
        "loadgen_cpu_s": 1.0,
        "upstream_cpu_s": 1.0,
        "error_count": 0,
        "duration_s": 10.0,
    }
    base.update(metrics)
    return {
        "system": system,
        "scenario": scenario,
        "repeat": repeat,
        "valid": valid,
        "problems": [] if valid else ["audit records missing in S3"],
        "metrics": base,
    }


def matrix() -> list[dict]:
    cells = []
    for r, drift in ((1, 0.0), (2, 5.0), (3, 10.0)):  # the machine gets slower every repeat
        cells.append(cell("direct", "stream-128", r, ttft_p99_ms=60.0 + drift))
        cells.append(cell("nginx", "stream-128", r, ttft_p99_ms=60.5 + drift,
                          latency_p50_ms=1000.5 + drift, cpu_s_per_1k_events=0.02))  # fmt: skip
        cells.append(cell("sidecar", "stream-128", r, ttft_p99_ms=61.0 + drift,
                          latency_p50_ms=1000.6 + drift, cpu_s_per_1k_events=0.05))  # fmt: skip
        cells.append(cell("sidecar", "nonstream-32", r, rps=600.0))
        cells.append(cell("litellm", "nonstream-32", r, rps=100.0))
    return cells


def row(rows: list[dict], system: str, scenario: str) -> dict:
    return next(r for r in rows if r["system"] == system and r["scenario"] == scenario)


def test_added_values_are_per_repeat_medians_so_drift_cancels() -> None:
    rows = summarise(matrix())
    sidecar = row(rows, "sidecar", "stream-128")
    assert sidecar["added_ttft_p99_ms"] == pytest.approx(1.0)
    assert sidecar["ttft_p99_ms"] == pytest.approx(66.0)  # the plain median keeps the drift
    assert sidecar["cpu_per_1k_events_x_nginx"] == pytest.approx(2.5)
    assert row(rows, "sidecar", "nonstream-32")["rps_x_litellm"] == pytest.approx(6.0)


def test_targets_are_judged_from_the_rows() -> None:
    cells = matrix()
    for r in (1, 2, 3):  # 1 stream: the sidecar adds 1.5 ms at the tail (limit 1 ms)
        cells.append(cell("direct", "stream-1", r, ttft_p99_ms=10.0))
        cells.append(cell("sidecar", "stream-1", r, ttft_p99_ms=11.5))
    judged = {t["target"]: t for t in targets(summarise(cells), None)}
    assert judged["sidecar: CPU per 1k streamed events vs nginx (stream-128)"]["met"] is False
    over = judged["sidecar: added TTFT p99 over nginx's (stream-128)"]
    assert over["value"] == pytest.approx(0.5) and over["met"] is True
    assert judged["sidecar: added TTFT p99 vs direct (stream-1)"]["value"] == pytest.approx(1.5)
    assert judged["sidecar: added TTFT p99 vs direct (stream-1)"]["met"] is False
    assert judged["sidecar: requests/s vs LiteLLM (nonstream-32)"]["met"] is True
    assert judged["sidecar: 512 streams, errors and peak RSS (MB)"]["met"] == "n/a"
    noise = judged["sidecar: added total latency p50 vs nginx's (stream-128)"]
    assert noise["value"] == pytest.approx(0.1)


def test_one_invalid_cell_marks_its_row_and_shows_in_the_table() -> None:
    cells = matrix()
    cells.append(cell("sidecar", "stream-128", 4, valid=False))
    rows = summarise(cells)
    assert row(rows, "sidecar", "stream-128")["valid"] is False
    assert row(rows, "nginx", "stream-128")["valid"] is True
    text = render({"summary": rows, "targets": targets(rows, None)})
    assert "sidecar !" in text and "MISSED" in text


def test_percentile_interpolates_and_tolerates_empty_input() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)


def test_profile_summary_counts_self_and_total_time() -> None:
    collapsed = "\n".join(
        [
            "run (asyncio/base_events.py:600);_relay (sidecar_audit/proxy.py:340) 6",
            "run (asyncio/base_events.py:600);_relay (sidecar_audit/proxy.py:341);"
            "feed (sidecar_audit/capture.py:90) 3",
            "run (asyncio/base_events.py:600) 1",
        ]
    )
    summary = summarise_profile(collapsed)
    assert summary["samples"] == 10
    top = summary["self"][0]
    assert (top["frame"], top["percent"]) == ("sidecar_audit/proxy.py:_relay", 60.0)
    totals = {t["frame"]: t["percent"] for t in summary["total"]}
    assert totals["sidecar_audit/proxy.py:_relay"] == 90.0
    assert totals["asyncio/base_events.py:run"] == 100.0
    assert summary["self_by_file"][0]["frame"] == "sidecar_audit/proxy.py"


def test_a_failed_profile_is_reported_not_fatal() -> None:
    rows = summarise(matrix())
    profiles = [{"system": "sidecar", "summary": None, "cell": {"problems": ["no py-spy"]}}]
    text = render({"summary": rows, "targets": [], "profiles": profiles})
    assert "sidecar: profile failed: ['no py-spy']" in text


def test_the_ttft_rows_preset_sets_issue_11s_cells_and_explicit_options_win() -> None:
    plan = build_plan(parse_args(["--ttft-rows", "--output", "/tmp/x.json"]))
    assert [s.name for s in plan.systems if s.name != "nginx"] == ["direct", "sidecar"]
    assert [s.name for s in plan.scenarios] == ["stream-1", "stream-128"]
    assert (plan.pace.ttft_ms, plan.pace.itl_ms, plan.pace.tokens) == (0.0, 25.0, 32)
    assert (plan.duration_s, plan.repeats) == (20.0, 5)
    plan = build_plan(parse_args(["--ttft-rows", "--repeats", "2", "--ttft-ms", "75"]))
    assert (plan.repeats, plan.pace.ttft_ms, plan.duration_s) == (2, 75.0, 20.0)
