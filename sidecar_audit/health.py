"""The sidecar's own `/health`: can this task serve audited traffic now? (and why not)

The NLB's target group and ECS both act on the status: ECS replaces a task
whose target fails, and replacing a GPU task reloads the model (minutes of
downtime). So the status is 503 only for what a replacement would fix or what
makes serving unaudited: vLLM not ready, the spool failed, the spool full.
A backlog or a shipping lag (S3 slow or down) is the same for every task and
a new task would not help; the spool holds the records until S3 is back. They
are reported as `warnings` in the JSON body, in the metrics
(`llm_audit_spool_bytes`, `llm_audit_oldest_unshipped_age_seconds`, the EMF
metrics) and by the stack's alarms, never in the status code.

The container's Docker health check only asks whether the process answers
(see sidecar_audit/Dockerfile). `verdict` is pure; `UpstreamProbe` does the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class AuditHealth:
    """The audit path's state as the health check sees it."""

    failed: str | None  # why the spool cannot take records, if it cannot
    full: bool
    spool_bytes: int
    oldest_unshipped_age_s: float | None
    records_dropped: int


@dataclass(frozen=True)
class HealthLimits:
    """Thresholds of the body's warnings; they never change the status."""

    max_spool_bytes: int
    max_ship_lag_s: float


def _problems(upstream_ok: bool, upstream_detail: str, audit: AuditHealth) -> list[str]:
    """What stops this task from serving audited traffic now (each one means 503)."""
    problems: list[str] = []
    if not upstream_ok:
        problems.append(f"vllm: {upstream_detail}")
    if audit.failed:
        problems.append(f"audit spool failed: {audit.failed}")
    if audit.full:
        problems.append("audit spool full")
    return problems


def _warnings(audit: AuditHealth, limits: HealthLimits) -> list[str]:
    """What an operator should look at, though the task serves and audits (status stays 200)."""
    warnings: list[str] = []
    if audit.spool_bytes > limits.max_spool_bytes:
        warnings.append(f"audit backlog {audit.spool_bytes} bytes exceeds {limits.max_spool_bytes}")
    age = audit.oldest_unshipped_age_s
    if age is not None and age > limits.max_ship_lag_s:
        warnings.append(
            f"audit shipping lags: oldest unshipped record is {age:.0f} s old "
            f"(warning above {limits.max_ship_lag_s:.0f} s)"
        )
    return warnings


def verdict(
    upstream_ok: bool, upstream_detail: str, audit: AuditHealth, limits: HealthLimits
) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of `/health`."""
    problems = _problems(upstream_ok, upstream_detail, audit)
    age = audit.oldest_unshipped_age_s
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "warnings": _warnings(audit, limits),
        "vllm": {"ok": upstream_ok, "detail": upstream_detail},
        "audit": {
            "spoolBytes": audit.spool_bytes,
            "oldestUnshippedAgeSeconds": None if age is None else round(age, 3),
            "recordsDropped": audit.records_dropped,
            "spoolFull": audit.full,
            "spoolFailed": audit.failed,
        },
    }
    return (200 if not problems else 503), body


class UpstreamProbe:
    """Asks vLLM's `/health` at most once per `cache_s`; concurrent callers share one probe."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_url: str,
        cache_s: float,
        clock: Callable[[], float],
        timeout_s: float = 5.0,
    ) -> None:
        self._session = session
        self._url = f"{upstream_url}/health"
        self._cache_s = cache_s
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._checked_at: float | None = None
        self._result: tuple[bool, str] = (False, "not checked yet")
        self._inflight: asyncio.Task[tuple[bool, str]] | None = None

    async def status(self) -> tuple[bool, str]:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._cache_s:
            return self._result
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._probe())
            self._inflight.add_done_callback(self._store)
        return await asyncio.shield(self._inflight)

    def _store(self, task: asyncio.Task[tuple[bool, str]]) -> None:
        self._inflight = None
        if not task.cancelled() and task.exception() is None:
            self._result = task.result()
            self._checked_at = self._clock()

    async def _probe(self) -> tuple[bool, str]:
        try:
            async with self._session.get(self._url, timeout=self._timeout) as response:
                await response.read()
                if response.status == 200:
                    return True, "ok"
                return False, f"/health answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"unreachable ({type(exc).__name__})"
