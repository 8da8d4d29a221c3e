"""A whole benchmark run: shared services up, every cell in turn, soak and profiles, results out.

Order: for each repeat, for each scenario, every system one after another (never
two systems under load at once: they share the cores); interleaving systems
inside a repeat spreads slow drift of a shared machine evenly over them. Each
cell starts its system fresh and stops it afterwards, so no cell inherits
another's memory or connections. Then the soak (long cells, memory sampled over
time) and the profiled cells, which are reported apart from the matrix.

Invariants: a cell that fails to start or run is recorded with its error and
the run goes on; an auditing system's cell is valid only when every request it
answered has its record in S3; the shared services are stopped whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bare_proxy import start_bare_proxy
from bench.cell import CellMeasure, Scenario, run_cell
from bench.children import REPO_ROOT
from bench.litellm import start_litellm
from bench.nginx import start_nginx
from bench.plan import Plan, SystemSpec
from bench.profiling import Profiler, find_py_spy
from bench.services import Services, start_services
from bench.sidecar import start_sidecar
from bench.target import LaunchContext, Running, start_direct

Progress = Callable[[str], None]


def _launch(spec: SystemSpec, ctx: LaunchContext, plan: Plan) -> Running:
    if spec.kind == "direct":
        return start_direct(ctx)
    if spec.kind == "nginx":
        assert plan.nginx is not None
        return start_nginx(ctx, plan.nginx)
    if spec.kind == "aiohttp-bare":
        return start_bare_proxy(ctx)
    if spec.kind == "sidecar":
        return start_sidecar(ctx, spec.name, spec.fsync_ms, plan.sidecar_env, plan.audit_timeout_s)
    if spec.kind == "litellm":
        assert plan.litellm is not None
        return start_litellm(ctx, list(plan.litellm))
    raise ValueError(f"unknown system kind {spec.kind}")


class Runner:
    """Runs cells against shared services; collects one dict per cell."""

    def __init__(self, plan: Plan, services: Services, workdir: Path, progress: Progress) -> None:
        self.plan = plan
        self.services = services
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.progress = progress
        self.token = secrets.token_hex(3)
        self.count = 0

    def cell(
        self,
        spec: SystemSpec,
        scenario: Scenario,
        repeat: int,
        *,
        duration_s: float | None = None,
        rss_every_s: float | None = None,
        keep_series: bool = False,
        profiler: Profiler | None = None,
    ) -> dict[str, Any]:
        self.count += 1
        cell_id = f"{self.token}-{self.count:03d}"
        upstream = self.services.paced if scenario.stream else self.services.instant
        assert upstream is not None
        ctx = LaunchContext(
            cell_id, upstream, self.workdir, self.log_dir, self.services.s3_endpoint
        )
        entry: dict[str, Any] = {
            "cell": cell_id,
            "system": spec.name,
            "scenario": scenario.name,
            "repeat": repeat,
            "valid": False,
            "problems": [],
        }
        if spec.kind == "sidecar":  # the tree may change during a long run: pin what ran
            entry["sidecar_sources_sha256"] = _sidecar_digest()
        started = time.monotonic()
        running: Running | None = None
        try:
            running = _launch(spec, ctx, self.plan)
            attach = None
            if profiler is not None and running.target.pids:
                pid = running.target.pids[0]

                def attach(seconds: float) -> None:
                    profiler.attach(pid, seconds)

            measure = run_cell(
                running.target,
                upstream.pid,
                scenario,
                self.plan.timing(scenario, duration_s),
                generators=self.plan.generators,
                workdir=self.workdir,
                log_dir=self.log_dir,
                cell_id=cell_id,
                rss_every_s=rss_every_s or self.plan.rss_every_s,
                keep_rss_series=keep_series,
                at_window_open=attach,
            )
            entry["metrics"] = measure.summary()
            if keep_series:
                entry["rss_series_mb"] = [(t, round(b / 2**20, 2)) for t, b in measure.rss_series]
            report = running.self_report()
            if report is not None:
                entry["self_report"] = report
            audit = running.audit(measure.responded_ids)
            if audit is not None:
                entry["audit"] = {**asdict(audit), "complete": audit.complete}
            entry["problems"] = _problems(measure, audit is None or audit.complete)
            entry["valid"] = not entry["problems"]
        except Exception as exc:  # one broken cell must not end the run
            entry["problems"] = [f"{type(exc).__name__}: {exc}"[:2000]]
        finally:
            if running is not None:
                running.stop()
        entry["wall_s"] = round(time.monotonic() - started, 1)
        self.progress(_progress_line(entry))
        return entry


def _problems(measure: CellMeasure, audit_complete: bool) -> list[str]:
    problems = []
    if measure.completed == 0:
        problems.append("no request completed in the window")
    if measure.unfinished:
        problems.append(f"{measure.unfinished} requests never finished")
    if not audit_complete:
        problems.append("audit records missing in S3")
    return problems


def _progress_line(entry: dict[str, Any]) -> str:
    m = entry.get("metrics") or {}
    status = "ok" if entry["valid"] else "INVALID: " + "; ".join(entry["problems"])
    parts = [f"[{entry['cell']}] {entry['system']:<20} {entry['scenario']:<13} r{entry['repeat']}"]
    if m:
        parts.append(f"{m['rps']:8.1f} req/s {m['events_per_s']:9.0f} ev/s")
        if m["cpu_s_per_1k_events"] is not None:
            parts.append(f"cpu/1k ev {m['cpu_s_per_1k_events']:.3f}s")
        parts.append(f"err {m['error_count']}")
    audit = entry.get("audit")
    if audit:
        parts.append(f"audit {audit['found']}/{audit['expected']}")
    parts.append(f"({entry['wall_s']}s) {status}")
    return "  ".join(parts)


def _sidecar_digest() -> str:
    """sha256 over the sidecar's source files as they are on disk now."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "sidecar_audit").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _source_facts() -> dict[str, Any]:
    """Which code was measured: git HEAD, and a digest of the sidecar's sources as they are."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "sidecar_audit"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        head, dirty = "", ""
    return {
        "git_head": head or None,
        "sidecar_modified": bool(dirty),
        "sidecar_sources_sha256": _sidecar_digest(),
    }


def _host_facts() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def run(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Run the whole plan; returns the results document (see README)."""
    plan.output.parent.mkdir(parents=True, exist_ok=True)  # profiles are written beside it
    workdir = Path(tempfile.mkdtemp(prefix="central-llm-bench-"))
    (workdir / "logs").mkdir()
    kinds = {spec.kind for spec in plan.systems}
    needs_instant = any(not s.stream for s in plan.scenarios)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host_before": _host_facts(),
            "repo": str(REPO_ROOT),
            "source": _source_facts(),
            "workdir": str(workdir),
            "plan": _plan_facts(plan),
            "notes": list(plan.notes),
        },
        "cells": [],
    }
    progress(f"workdir {workdir} (logs in {workdir / 'logs'})")
    services = start_services(
        workdir / "logs",
        plan.pace,
        need_instant=needs_instant,
        need_s3="sidecar" in kinds,
        s3_endpoint=plan.s3_endpoint,
    )
    try:
        runner = Runner(plan, services, workdir, progress)
        for repeat in range(1, plan.repeats + 1):
            for scenario in plan.scenarios:
                for spec in plan.systems:
                    results["cells"].append(runner.cell(spec, scenario, repeat))
        if plan.soak_s:
            results["soak"] = [
                runner.cell(
                    spec,
                    plan.soak_scenario,
                    1,
                    duration_s=plan.soak_s,
                    rss_every_s=plan.soak_every_s,
                    keep_series=True,
                )
                for spec in plan.systems
                if spec.kind == "sidecar"
            ]
        if plan.profile_scenario is not None:
            results["profiles"] = _profiles(plan, runner, workdir)
    finally:
        services.stop()
        results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["meta"]["host_after"] = _host_facts()
        if not plan.keep_workdir:
            _keep_logs_only(workdir)
    return results


def _profiles(plan: Plan, runner: Runner, workdir: Path) -> list[dict[str, Any]]:
    binary = find_py_spy()
    scenario = plan.profile_scenario
    assert scenario is not None
    out: list[dict[str, Any]] = []
    for spec in plan.systems:
        if spec.kind != "sidecar":
            continue
        if binary is None:
            out.append({"system": spec.name, "error": "py-spy not found (pip install py-spy)"})
            continue
        profile_path = plan.output.parent / f"{plan.output.stem}.{spec.name}.pyspy.txt"
        profiler = Profiler(binary, profile_path, native=plan.profile_native)
        cell = runner.cell(spec, scenario, 0, profiler=profiler)
        out.append(
            {
                "system": spec.name,
                "scenario": scenario.name,
                "cell": cell,
                "summary": profiler.finish(),
            }
        )
    return out


def _plan_facts(plan: Plan) -> dict[str, Any]:
    return {
        "systems": [s.name for s in plan.systems],
        "scenarios": [s.name for s in plan.scenarios],
        "pace": asdict(plan.pace),
        "duration_s": plan.duration_s,
        "warmup_s": {s.name: plan.timing(s).warmup_s for s in plan.scenarios},
        "repeats": plan.repeats,
        "generators": plan.generators,
        "soak_s": plan.soak_s,
        "profile": None if plan.profile_scenario is None else plan.profile_scenario.name,
        "sidecar_env": plan.sidecar_env,
        "nginx": plan.nginx,
        "litellm": None if plan.litellm is None else list(plan.litellm),
    }


def _keep_logs_only(workdir: Path) -> None:
    """Drop spools, configs and generator files; keep the logs for a post-mortem."""
    for entry in workdir.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
