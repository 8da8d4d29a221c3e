"""The sidecar's own `/health`: vLLM's health (probed, cached briefly) and the audit path's.

The NLB's target group checks it, and ECS replaces a task its load balancer
reports unhealthy, so it fails both when vLLM is not ready and when the audit
trail is in trouble (spool failed or full, backlog above the threshold,
shipping stalled): nothing unaudited should be served by a healthy-looking
task. When every target fails (an S3 outage hits all tasks alike), an NLB
routes to all of them anyway, so the service keeps answering while the spool
holds the records. The container's own Docker health check only asks whether
the process answers (see sidecar_audit/Dockerfile), so an audit problem never
restarts vLLM with it. `verdict` is pure; `UpstreamProbe` does the I/O.
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
    max_spool_bytes: int
    max_ship_lag_s: float


def verdict(
    upstream_ok: bool, upstream_detail: str, audit: AuditHealth, limits: HealthLimits
) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of `/health`."""
    problems: list[str] = []
    if not upstream_ok:
        problems.append(f"vllm: {upstream_detail}")
    if audit.failed:
        problems.append(f"audit spool failed: {audit.failed}")
    if audit.full:
        problems.append("audit spool full")
    if audit.spool_bytes > limits.max_spool_bytes:
        problems.append(f"audit backlog {audit.spool_bytes} bytes exceeds {limits.max_spool_bytes}")
    age = audit.oldest_unshipped_age_s
    if age is not None and age > limits.max_ship_lag_s:
        problems.append(
            f"audit shipping stalled: oldest unshipped record is {age:.0f} s old "
            f"(limit {limits.max_ship_lag_s:.0f} s)"
        )
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
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
