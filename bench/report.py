"""From cells to conclusions: medians per system × scenario, deltas and ratios, targets, the table.

Rules (the README states them for readers):
- a summary row holds the median over repeats of each per-cell number;
- "added vs direct" is computed per repeat (system minus `direct` in the same
  repeat and scenario) and then the median is taken, so slow drift of a shared
  machine cancels out; likewise the ratios against nginx and LiteLLM;
- a row is valid only when every one of its cells is; invalid cells still show
  their numbers, marked, so a reader sees what went wrong;
- targets are judged on the rows, and say "n/a" when the run lacks what they need.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import stats

Cell = dict[str, Any]
Row = dict[str, Any]

_MEDIANS = (
    "rps",
    "events_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_s_per_1k_events",
    "cpu_ms_per_request",
    "rss_peak_mb",
    "rss_start_mb",
    "rss_end_mb",
    "loadgen_cpu_s",
    "upstream_cpu_s",
)
_ADDED = ("ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms")


def _metric(cell: Cell | None, name: str) -> float | None:
    if cell is None or "metrics" not in cell:
        return None
    value = cell["metrics"].get(name)
    return value if isinstance(value, (int, float)) else None


def _paired(
    cells: list[Cell],
    others: dict[int, Cell],
    combine: Callable[[float | None, float | None], float | None],
    name: str,
    other_name: str | None = None,
) -> tuple[float | None, list[float | None]]:
    per_repeat = [
        combine(_metric(c, name), _metric(others.get(c["repeat"]), other_name or name))
        for c in cells
    ]
    return stats.median(per_repeat), per_repeat


def summarise(cells: Iterable[Cell]) -> list[Row]:
    grouped: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for cell in cells:
        key = (cell["system"], cell["scenario"])
        if key not in grouped:
            order.append(key)
        grouped[key].append(cell)

    def by_repeat(system: str, scenario: str) -> dict[int, Cell]:
        return {c["repeat"]: c for c in grouped.get((system, scenario), [])}

    rows: list[Row] = []
    for system, scenario in order:
        group = grouped[(system, scenario)]
        row: Row = {"system": system, "scenario": scenario, "repeats": len(group)}
        row["valid"] = all(c["valid"] for c in group)
        row["problems"] = sorted({p for c in group for p in c["problems"]})
        for name in _MEDIANS:
            row[name] = stats.median(_metric(c, name) for c in group)
        row["errors"] = sum(int(_metric(c, "error_count") or 0) for c in group)
        audits = [c["audit"] for c in group if c.get("audit")]
        if audits:
            row["audit_found"] = sum(a["found"] for a in audits)
            row["audit_expected"] = sum(a["expected"] for a in audits)
            row["audit_duplicates"] = sum(a["duplicates"] for a in audits)
        direct = by_repeat("direct", scenario)
        nginx = by_repeat("nginx", scenario)
        litellm = by_repeat("litellm", scenario)
        for name in _ADDED:
            row[f"added_{name}"], row[f"added_{name}_per_repeat"] = _paired(
                group, direct, stats.difference, name
            )
        row["cpu_per_1k_events_x_nginx"], _ = _paired(
            group, nginx, stats.ratio, "cpu_s_per_1k_events"
        )
        row["cpu_per_request_x_nginx"], _ = _paired(group, nginx, stats.ratio, "cpu_ms_per_request")
        row["rps_x_nginx"], _ = _paired(group, nginx, stats.ratio, "rps")
        row["rps_x_litellm"], _ = _paired(group, litellm, stats.ratio, "rps")
        rows.append(row)
    return rows


def _row(rows: list[Row], system: str, scenario: str) -> Row | None:
    return next((r for r in rows if r["system"] == system and r["scenario"] == scenario), None)


def _target(name: str, value: Any, limit: str, met: bool | None, **extra: Any) -> dict[str, Any]:
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "met": "n/a" if met is None else met,
        **extra,
    }


def targets(rows: list[Row], soak: list[Cell] | None) -> list[dict[str, Any]]:
    """The issue's targets, judged per sidecar variant."""
    out: list[dict[str, Any]] = []
    sidecars = sorted({r["system"] for r in rows if r["system"].startswith("sidecar")})
    for system in sidecars:
        s128 = _row(rows, system, "stream-128")
        n128 = _row(rows, "nginx", "stream-128")
        ratio = None if s128 is None else s128["cpu_per_1k_events_x_nginx"]
        out.append(
            _target(
                f"{system}: CPU per 1k streamed events vs nginx (stream-128)",
                ratio,
                "<= 1.5x (design target, issue 11)",
                None if ratio is None else ratio <= 1.5,
            )
        )
        s1 = _row(rows, system, "stream-1")
        added1 = None if s1 is None else s1["added_ttft_p99_ms"]
        out.append(
            _target(
                f"{system}: added TTFT p99 vs direct (stream-1)",
                added1,
                "<= 1 ms",
                None if added1 is None else added1 <= 1.0,
            )
        )
        over = None
        if s128 is not None and n128 is not None:
            over = stats.difference(s128["added_ttft_p99_ms"], n128["added_ttft_p99_ms"])
        out.append(
            _target(
                f"{system}: added TTFT p99 over nginx's (stream-128)",
                None if over is None else round(over, 3),
                "<= 2 ms",
                None if over is None else over <= 2.0,
            )
        )
        out.append(_latency_noise(system, s128, n128))
        s512 = _row(rows, system, "stream-512")
        ok512 = None if s512 is None else (s512["errors"] == 0 and s512["valid"])
        out.append(
            _target(
                f"{system}: 512 streams, errors and peak RSS (MB)",
                None
                if s512 is None
                else {
                    "errors": s512["errors"],
                    "rss_peak_mb": s512["rss_peak_mb"],
                    "valid": s512["valid"],
                },
                "0 errors, all audited, RSS reported",
                ok512,
            )
        )
        for row in rows:
            if row["system"] == system and row["scenario"].startswith("nonstream"):
                x = row["rps_x_litellm"]
                out.append(
                    _target(
                        f"{system}: requests/s vs LiteLLM ({row['scenario']})",
                        x,
                        ">= 5.0x",
                        None if x is None else x >= 5.0,
                    )
                )
        for cell in soak or []:
            if cell["system"] == system and "metrics" in cell:
                out.append(_soak_target(cell))
    return out


def _latency_noise(system: str, s: Row | None, n: Row | None) -> dict[str, Any]:
    name = f"{system}: added total latency p50 vs nginx's (stream-128)"
    if s is None or n is None or s["added_latency_p50_ms"] is None:
        return _target(name, None, "within noise", None)
    if n["added_latency_p50_ms"] is None:
        return _target(name, None, "within noise", None)
    diff = s["added_latency_p50_ms"] - n["added_latency_p50_ms"]
    noise = max(
        stats.spread(s["added_latency_p50_ms_per_repeat"]) or 0.0,
        stats.spread(n["added_latency_p50_ms_per_repeat"]) or 0.0,
    )
    p99_diff = stats.difference(s["added_latency_p99_ms"], n["added_latency_p99_ms"])
    limit = f"|diff| <= noise ({noise:.3f} ms)"
    return _target(
        name, round(diff, 3), limit, abs(diff) <= noise, noise_ms=noise, p99_diff_ms=p99_diff
    )


def _soak_target(cell: Cell) -> dict[str, Any]:
    m = cell["metrics"]
    start, end = m["rss_start_mb"], m["rss_end_mb"]
    growth = end - start
    allowed = max(10.0, 0.05 * start)
    return _target(
        f"{cell['system']}: RSS over a {m['duration_s']:.0f}s soak ({cell['scenario']})",
        {"start_mb": start, "end_mb": end, "peak_mb": m["rss_peak_mb"]},
        f"flat: end - start <= {allowed:.1f} MB",
        growth <= allowed and cell["valid"],
    )


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


_COLUMNS = (
    ("system", 20, lambda r: r["system"] + ("" if r["valid"] else " !")),
    ("scenario", 13, lambda r: r["scenario"]),
    ("req/s", 8, lambda r: _fmt(r["rps"])),
    ("ev/s", 8, lambda r: _fmt(r["events_per_s"], ".0f")),
    ("ttft p50/p99 ms", 16, lambda r: f"{_fmt(r['ttft_p50_ms'])}/{_fmt(r['ttft_p99_ms'])}"),
    (
        "+ttft p50/p99",
        14,
        lambda r: f"{_fmt(r['added_ttft_p50_ms'], '+.2f')}/{_fmt(r['added_ttft_p99_ms'], '+.2f')}",
    ),
    ("total p50/p99 ms", 17, lambda r: f"{_fmt(r['latency_p50_ms'])}/{_fmt(r['latency_p99_ms'])}"),
    (
        "+total p50/p99",
        15,
        lambda r: (
            f"{_fmt(r['added_latency_p50_ms'], '+.1f')}/{_fmt(r['added_latency_p99_ms'], '+.1f')}"
        ),
    ),
    ("cpu s/1k ev", 11, lambda r: _fmt(r["cpu_s_per_1k_events"], ".3f")),
    ("cpu ms/req", 10, lambda r: _fmt(r["cpu_ms_per_request"], ".2f")),
    (
        "x nginx",
        7,
        lambda r: _fmt(r["cpu_per_1k_events_x_nginx"] or r["cpu_per_request_x_nginx"], ".2f"),
    ),
    ("rps x litellm", 13, lambda r: _fmt(r["rps_x_litellm"], ".2f")),
    ("rss MB", 7, lambda r: _fmt(r["rss_peak_mb"], ".0f")),
    ("gen cpu s", 9, lambda r: _fmt(r["loadgen_cpu_s"], ".1f")),
    ("err", 5, lambda r: str(r["errors"])),
    (
        "audit",
        13,
        lambda r: f"{r['audit_found']}/{r['audit_expected']}" if "audit_found" in r else "-",
    ),
)


def table(rows: list[Row]) -> str:
    header = " ".join(
        name.rjust(width) if i > 1 else name.ljust(width)
        for i, (name, width, _) in enumerate(_COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [
            render(row).rjust(width) if i > 1 else render(row).ljust(width)
            for i, (_, width, render) in enumerate(_COLUMNS)
        ]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def targets_text(judged: list[dict[str, Any]]) -> str:
    marks = {True: "MET   ", False: "MISSED", "n/a": "n/a   "}
    return "\n".join(
        f"{marks[t['met']]} {t['target']}: {_fmt(t['value'], '.3f')} (target {t['limit']})"
        for t in judged
    )


def profile_text(profiles: list[dict[str, Any]], top: int = 15) -> str:
    lines: list[str] = []
    for p in profiles:
        summary = p.get("summary") or {}
        if "samples" not in summary:
            cell_problems = (p.get("cell") or {}).get("problems")
            reason = p.get("error") or summary.get("error") or cell_problems or "no samples"
            lines.append(f"{p['system']}: profile failed: {reason}")
            continue
        lines.append(
            f"{p['system']} @ {p['scenario']}: {summary['samples']} samples ({summary.get('file')})"
        )
        lines.append("  self%   total%  frame")
        totals = {t["frame"]: t["percent"] for t in summary["total"]}
        for item in summary["self"][:top]:
            total = totals.get(item["frame"])
            lines.append(f"  {item['percent']:5.1f}  {_fmt(total, '6.1f'):>6}  {item['frame']}")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """Everything a person reads at the end of a run."""
    parts = ["", table(results["summary"]), ""]
    parts.append(
        "'!' = invalid row (see problems in the JSON); deltas are per-repeat medians "
        "vs direct; 'x nginx' = CPU per 1k events (streams) or per request."
    )
    if results.get("targets"):
        parts += ["", "Targets:", targets_text(results["targets"])]
    if results.get("profiles"):
        parts += ["", "Profiles (top frames by self time):", profile_text(results["profiles"])]
    return "\n".join(parts)


def finish(results: dict[str, Any]) -> dict[str, Any]:
    results["summary"] = summarise(results["cells"])
    results["targets"] = targets(results["summary"], results.get("soak"))
    return results


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
