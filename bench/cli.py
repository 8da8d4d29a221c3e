"""`scripts/benchmark` / `python -m bench`: options in, a plan, a run, a table and a JSON file out.

Exit codes: 0 when every cell was valid, 1 when some cell was invalid (missing
audit records, requests that never finished, a system that failed to start),
2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.cell import Scenario
from bench.children import REPO_ROOT
from bench.litellm import litellm_command
from bench.nginx import find_nginx
from bench.plan import Plan, SystemSpec, parse_scenario, parse_system
from bench.report import finish, render, write_json
from bench.run import run
from bench.services import Pace

DEFAULT_SYSTEMS = "direct,nginx,aiohttp-bare,sidecar,litellm"
DEFAULT_SCENARIOS = "stream-32,stream-128,stream-512,nonstream-32"
# `--ttft-rows`: issue 11's TTFT rows. With no time to first token the response head
# and the first events reach the proxy in one read (the case where a relay can hold
# them), and a 32-token answer keeps 128 streams turning over; 5 repeats of 20 s
# because the 128-stream p99 moves by more than a millisecond between repeats.
TTFT_ROWS = {
    "systems": "direct,nginx,sidecar",
    "scenarios": "stream-1,stream-128",
    "ttft_ms": 0.0,
    "itl_ms": 25.0,
    "tokens": 32,
    "duration": 20.0,
    "repeats": 5,
}


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/benchmark",
        description="Benchmark the audit sidecar against direct access, nginx and LiteLLM "
        "on loopback (see bench/README.md).",
    )
    p.add_argument(
        "--systems",
        default=DEFAULT_SYSTEMS,
        help="comma-separated: direct, nginx, sidecar, sidecar-fsync<ms>, litellm "
        f"(default {DEFAULT_SYSTEMS}; nginx/litellm are skipped when not installed)",
    )
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated stream-<n> / nonstream-<n> (default {DEFAULT_SCENARIOS})",
    )
    p.add_argument(
        "--sidecar-fsync-ms",
        default="",
        help="extra sidecar variants with AUDIT_SPOOL_FSYNC_INTERVAL_MS set, e.g. 1000,60000",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per cell")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of load before the window opens (default: from the pace)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of the matrix; medians reported")
    p.add_argument("--generators", type=int, default=2, help="load generator processes")
    p.add_argument("--ttft-ms", type=float, default=75.0, help="upstream time to first token")
    p.add_argument("--itl-ms", type=float, default=25.0, help="upstream inter-token delay")
    p.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    p.add_argument("--rss-every", type=float, default=0.5, help="RSS sampling interval, seconds")
    p.add_argument("--nginx", default=None, help="nginx binary (default: nginx on PATH)")
    p.add_argument(
        "--litellm",
        default=None,
        help="LiteLLM: its `litellm` script, a venv python, or the venv directory "
        "(default: litellm on PATH)",
    )
    p.add_argument(
        "--sidecar-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the sidecar (repeatable)",
    )
    p.add_argument(
        "--s3-endpoint", default=None, help="a local S3 endpoint to use instead of starting moto"
    )
    p.add_argument(
        "--audit-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for a sidecar cell's records in S3 (default: flush interval + 60)",
    )
    p.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after the matrix, run each sidecar variant this long and report RSS",
    )
    p.add_argument("--soak-every", type=float, default=10.0, help="soak RSS sampling, seconds")
    p.add_argument("--soak-scenario", default="stream-128")
    p.add_argument(
        "--profile",
        default=None,
        metavar="SCENARIO",
        help="after the matrix, one extra py-spy-profiled cell per sidecar variant",
    )
    p.add_argument("--profile-native", action="store_true", help="py-spy --native")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results JSON (default bench-results/<timestamp>.json)",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="print the table, targets and profiles of an earlier run's JSON and exit",
    )
    p.add_argument(
        "--ttft-rows",
        action="store_true",
        help="issue 11's TTFT rows: defaults become --systems direct,nginx,sidecar "
        "--scenarios stream-1,stream-128 --ttft-ms 0 --itl-ms 25 --tokens 32 --duration 20 "
        "--repeats 5 (options given explicitly still win)",
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep spools, configs and generator files (logs are always kept)",
    )
    return p


def build_plan(args: argparse.Namespace) -> Plan:
    notes: list[str] = []
    specs = [parse_system(name) for name in _csv(args.systems)]
    specs += [parse_system(f"sidecar-fsync{ms}") for ms in _csv(args.sidecar_fsync_ms)]
    nginx = find_nginx(args.nginx) if any(s.kind == "nginx" for s in specs) else None
    litellm = litellm_command(args.litellm) if any(s.kind == "litellm" for s in specs) else None
    kept: list[SystemSpec] = []
    for spec in specs:
        if spec.kind == "nginx" and nginx is None:
            notes.append("nginx skipped: not installed (apt-get install nginx-light)")
        elif spec.kind == "litellm" and litellm is None:
            notes.append("litellm skipped: not found (--litellm PATH or litellm on PATH)")
        elif spec.name not in {k.name for k in kept}:
            kept.append(spec)
    env = {}
    for item in args.sidecar_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--sidecar-env {item!r}: expected NAME=VALUE")
        env[name] = value
    if args.repeats < 1 or args.duration <= 0 or args.generators < 1:
        raise ValueError("--repeats and --generators must be >= 1, --duration > 0")
    output = args.output or REPO_ROOT / "bench-results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    profile: Scenario | None = parse_scenario(args.profile) if args.profile else None
    return Plan(
        systems=tuple(kept),
        scenarios=tuple(parse_scenario(name) for name in _csv(args.scenarios)),
        pace=Pace(args.ttft_ms, args.itl_ms, args.tokens),
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
        generators=args.generators,
        rss_every_s=args.rss_every,
        output=output,
        nginx=nginx,
        litellm=None if litellm is None else tuple(litellm),
        sidecar_env=env,
        s3_endpoint=args.s3_endpoint,
        audit_timeout_s=args.audit_timeout,
        soak_s=args.soak,
        soak_every_s=args.soak_every,
        soak_scenario=parse_scenario(args.soak_scenario),
        profile_scenario=profile,
        profile_native=args.profile_native,
        keep_workdir=args.keep_workdir,
        notes=tuple(notes),
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ttft_rows:  # the preset's values as defaults: what the command line says wins
        parser.set_defaults(**TTFT_ROWS)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(render(finish(json.loads(args.render.read_text()))))
        return 0
    try:
        plan = build_plan(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    for note in plan.notes:
        _progress(note)
    results = finish(run(plan, _progress))
    write_json(results, plan.output)
    print(render(results))
    print(f"\nresults: {plan.output}")
    cells = results["cells"] + results.get("soak", [])
    cells += [p["cell"] for p in results.get("profiles", []) if "cell" in p]
    return 0 if all(c["valid"] for c in cells) else 1
