"""What a benchmark run will do: systems, scenarios, pace, timings — one frozen value.

Invariants: scenario names are `stream-<n>` and `nonstream-<n>` (n concurrent
closed-loop clients); system names are `direct`, `nginx`, `sidecar` (default
settings), `sidecar-fsync<ms>` (a set `AUDIT_SPOOL_FSYNC_INTERVAL_MS`) and
`litellm`; streaming scenarios use the paced stand-in, non-streaming ones the
instant stand-in (see `services.py`). Timings not given are derived from the
pace so that a closed loop reaches its steady state before the window opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.cell import Scenario, Timing
from bench.services import Pace

SOAK_SCENARIO = Scenario("stream-128", True, 128)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str  # direct | nginx | aiohttp-bare | sidecar | litellm
    fsync_ms: float | None = None


@dataclass(frozen=True)
class Plan:
    systems: tuple[SystemSpec, ...]
    scenarios: tuple[Scenario, ...]
    pace: Pace
    duration_s: float
    warmup_s: float | None
    repeats: int
    generators: int
    rss_every_s: float
    output: Path
    nginx: str | None = None
    litellm: tuple[str, ...] | None = None
    sidecar_env: dict[str, str] = field(default_factory=dict)
    s3_endpoint: str | None = None
    audit_timeout_s: float | None = None
    soak_s: float | None = None
    soak_every_s: float = 10.0
    soak_scenario: Scenario = SOAK_SCENARIO
    profile_scenario: Scenario | None = None
    profile_native: bool = False
    keep_workdir: bool = False
    notes: tuple[str, ...] = ()

    def timing(self, scenario: Scenario, duration_s: float | None = None) -> Timing:
        duration = self.duration_s if duration_s is None else duration_s
        if scenario.stream:
            cycle = self.pace.request_s()
            return Timing(
                warmup_s=self.warmup_s if self.warmup_s is not None else 2 * cycle + 1.0,
                duration_s=duration,
                stagger_s=cycle,
                drain_s=3 * cycle + 30.0,
                request_timeout_s=max(60.0, 10 * cycle),
            )
        return Timing(
            warmup_s=self.warmup_s if self.warmup_s is not None else 2.0,
            duration_s=duration,
            stagger_s=0.2,
            drain_s=30.0,
            request_timeout_s=60.0,
        )


def parse_scenario(name: str) -> Scenario:
    kind, _, count = name.partition("-")
    if kind not in ("stream", "nonstream") or not count.isdigit() or int(count) <= 0:
        raise ValueError(f"scenario {name!r}: expected stream-<n> or nonstream-<n>")
    return Scenario(name, kind == "stream", int(count))


def parse_system(name: str) -> SystemSpec:
    if name in ("direct", "nginx", "aiohttp-bare", "litellm", "sidecar"):
        return SystemSpec(name, name)
    if name.startswith("sidecar-fsync"):
        value = float(name.removeprefix("sidecar-fsync"))
        if value <= 0:
            raise ValueError(f"system {name!r}: the fsync interval must be > 0 ms")
        return SystemSpec(name, "sidecar", value)
    raise ValueError(
        f"system {name!r}: expected direct, nginx, aiohttp-bare, sidecar, sidecar-fsync<ms> "
        "or litellm"
    )
