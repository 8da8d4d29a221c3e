"""The seam between the systems under test and the measurement: what a started system exposes.

Every launcher (direct, nginx, sidecar, LiteLLM) returns a `Running`: where the
load generator connects (`Target`), which processes are the system (their tree
is what CPU and memory are charged to), and, for an auditing system, how to
check afterwards that every answered request left a record.

Invariants: `Target.pids` is empty only for `direct` (no proxy in the path);
`stop()` is idempotent; `audit()` returns None for systems that do not audit;
`self_report()` is what the system says about itself (the sidecar's metrics), or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.children import Child

# Sent to every system (the sidecar requires them; the others ignore them).
AUDIT_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-llm-source", "bench"),
    ("x-llm-user", "bench-user"),
    ("x-llm-request-type", "chat"),
)


@dataclass(frozen=True)
class Target:
    system: str
    host: str
    port: int
    model: str
    headers: tuple[tuple[str, str], ...] = AUDIT_HEADERS
    pids: tuple[int, ...] = ()


@dataclass
class AuditCheck:
    """What the audit trail holds for the requests a cell sent."""

    expected: int
    found: int
    duplicates: int
    objects: int
    outcomes: dict[str, int] = field(default_factory=dict)
    missing_sample: list[str] = field(default_factory=list)
    waited_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.found == self.expected


class Running(Protocol):
    @property
    def target(self) -> Target: ...

    def audit(self, responded_ids: list[str]) -> AuditCheck | None: ...

    def self_report(self) -> dict[str, object] | None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Upstream:
    """A running vLLM stand-in the systems forward to."""

    url: str
    model: str
    pid: int


@dataclass(frozen=True)
class LaunchContext:
    """Everything a launcher needs for one cell."""

    cell_id: str
    upstream: Upstream
    workdir: Path
    log_dir: Path
    s3_endpoint: str | None


@dataclass
class DirectRunning:
    """`direct`: the load goes straight to the upstream; nothing to start or stop."""

    target: Target

    def audit(self, responded_ids: list[str]) -> AuditCheck | None:
        return None

    def self_report(self) -> dict[str, object] | None:
        return None

    def stop(self) -> None:
        return None


@dataclass
class ChildRunning:
    """A system that is one child process (tree) and keeps no audit trail: nginx,
    aiohttp-bare, LiteLLM."""

    target: Target
    child: Child

    def audit(self, responded_ids: list[str]) -> AuditCheck | None:
        return None

    def self_report(self) -> dict[str, object] | None:
        return None

    def stop(self) -> None:
        self.child.stop()


def start_direct(ctx: LaunchContext) -> DirectRunning:
    host, port = ctx.upstream.url.removeprefix("http://").rsplit(":", 1)
    return DirectRunning(Target("direct", host, int(port), ctx.upstream.model))
