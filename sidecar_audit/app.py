"""The sidecar's aiohttp application and its lifecycle.

Start order (`cleanup_ctx`, torn down in reverse): the upstream connection
pool (and the health probe's client session), the audit trail (spool
recovery, then the shipper), ECS task scale-in protection, the proxy, the
metrics listener, the CloudWatch EMF reporter. On SIGTERM aiohttp stops
accepting connections, task protection is let go at once (`on_shutdown`, before
the wait), and in-flight requests finish for `SHUTDOWN_GRACE_S`; then the audit
trail ships what the spool holds for up to `SHUTDOWN_SHIP_S` and the process
exits 0. Whatever is not shipped stays on disk for the next process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import HttpVersion11, hdrs, web

from .audit_trail import AuditTrail
from .config import Config
from .health import HealthLimits, UpstreamProbe, verdict
from .identity import discover_identity
from .metrics import AuditSnapshot, Metrics
from .proxy import Finished, Proxy, closes_connection
from .task_protection import TaskProtection, task_protection
from .upstream import UpstreamPool

log = logging.getLogger("sidecar_audit")

CONFIG = web.AppKey("config", Config)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", UpstreamPool)
TRAIL = web.AppKey("trail", AuditTrail)
METRICS = web.AppKey("metrics", Metrics)
PROXY = web.AppKey("proxy", Proxy)
PROBE = web.AppKey("probe", UpstreamProbe)
PROTECTION = web.AppKey("protection", TaskProtection)
EXIT_CODE = web.AppKey("exit_code", list[int])


def build_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.max_request_body_bytes, middlewares=[_no_unaudited_404]
    )
    app[CONFIG] = config
    app[EXIT_CODE] = [0]
    app[METRICS] = Metrics(lambda: app[TRAIL].snapshot(), config.metrics_models)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_audit_trail)
    app.cleanup_ctx.append(_task_protection)
    app.on_shutdown.append(_stop_protecting)
    app.cleanup_ctx.append(_proxy)
    app.cleanup_ctx.append(_metrics_listener)
    app.cleanup_ctx.append(_emf_reporter)
    app.router.add_get("/health", _health)
    # Every path, newlines included (`.` stops at one): whatever is refused is refused
    # by the proxy, in the OpenAI error shape and with its audit record.
    app.router.add_route("*", r"/{tail:[\s\S]*}", _forward, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> None:
    """`Expect: 100-continue` is answered as aiohttp answers it; any other expectation is
    ignored, as vLLM's server ignores it (RFC 9110 §10.1.1 allows either): aiohttp's own
    handler answered it 417 in plain text before the route's handler ran, so the request,
    an admin-route probe included, was refused without its audit record."""
    if (
        request.version == HttpVersion11
        and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
    ):
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except ConnectionError:
            # The client is gone: no 100 to send, but its request still goes on to the
            # handler, which records it (raising here would leave it without a record).
            return
        # As aiohttp's handler: the interim answer is not part of the response's size.
        request.writer.output_size = 0


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = UpstreamPool(
        config.upstream_url,
        connect_timeout=config.upstream_connect_timeout,
        read_timeout=config.upstream_read_timeout,
        keepalive_s=config.upstream_keepalive,
        max_connections=config.upstream_max_connections,
        queue_timeout=config.upstream_queue_timeout,
    )
    app[UPSTREAM] = pool
    # The health probe's own small client: a few requests, never on the proxy path.
    connector = aiohttp.TCPConnector(limit=4, keepalive_timeout=config.upstream_keepalive)
    try:
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            app[SESSION] = session
            app[PROBE] = UpstreamProbe(
                session, config.upstream_url, config.health_cache, asyncio.get_running_loop().time
            )
            yield
    finally:
        pool.close()


async def _audit_trail(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    trail = await AuditTrail.open(config, on_put=app[METRICS].observe_put, on_fatal=_fatal(app))
    app[TRAIL] = trail
    try:
        yield
    finally:
        await trail.close(config.shutdown_ship)


def _fatal(app: web.Application) -> Callable[[str], None]:
    def stop(reason: str) -> None:
        log.critical(
            "audit spool failed; stopping so the next process recovers from disk",
            extra={"reason": reason},
        )
        app[EXIT_CODE][0] = 1
        os.kill(os.getpid(), signal.SIGTERM)

    return stop


async def _task_protection(app: web.Application) -> AsyncIterator[None]:
    async with task_protection(app[CONFIG], app[METRICS].registry) as protection:
        app[PROTECTION] = protection
        yield


async def _stop_protecting(app: web.Application) -> None:
    """A task told to stop holds no protection (the streams still finish in the grace)."""
    app[PROTECTION].begin_stop()


async def _proxy(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    identity = await discover_identity(app[SESSION])
    trail, metrics = app[TRAIL], app[METRICS]

    def finished(done: Finished) -> None:
        trail.accept(done)
        usage = done.record.get("usage") or {}
        metrics.observe_exchange(
            done.path,
            done.status,
            done.outcome,
            done.latency_s,
            done.ttft_s,
            done.overhead_s,
            usage.get("promptTokens"),
            usage.get("completionTokens"),
        )
        metrics.observe_inference(
            done.path,
            done.record.get("model"),
            done.outcome,
            done.latency_s,
            done.ttft_s,
            usage.get("completionTokens"),
        )
        log.info(
            "request",
            extra={
                "requestId": done.record["requestId"],
                "method": done.record["method"],
                "path": done.path,
                "status": done.status,
                "outcome": done.outcome,
                "latencyMs": done.record["latencyMs"],
                "ttftMs": done.record["ttftMs"],
                "source": done.record["source"],
                "userId": done.record["userId"],
            },
        )

    app[PROXY] = Proxy(config, app[UPSTREAM], identity, trail.refusal, finished)
    log.info(
        "sidecar ready",
        extra={
            "listen": f"{config.listen_host}:{config.listen_port}",
            "upstream": config.upstream_url,
            "version": identity.version,
        },
    )
    yield


@web.middleware
async def _no_unaudited_404(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A target no route matches (`CONNECT host:port`, `OPTIONS *`: not a path) goes to the
    proxy too, which refuses it like any other path, in the OpenAI shape and audited."""
    if request.match_info.http_exception is not None:
        return await _forward(request)  # its answer closes a CONNECT's connection
    return await handler(request)


async def _forward(request: web.Request) -> web.StreamResponse:
    metrics, protection = request.app[METRICS], request.app[PROTECTION]
    metrics.in_flight.inc()
    protection.busy()
    try:
        return await request.app[PROXY].handle(request)
    finally:
        metrics.in_flight.dec()
        protection.idle()


async def _health(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG]
    upstream_ok, detail = await app[PROBE].status()
    status, body = verdict(
        upstream_ok,
        detail,
        app[TRAIL].health(),
        HealthLimits(config.health_max_spool_bytes, config.health_max_ship_lag),
    )
    response = web.json_response(body, status=status)
    if closes_connection(request):
        response.force_close()
    return response


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.metrics_port == 0:
        yield
        return
    metrics = app[METRICS]

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.metrics_host, config.metrics_port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _emf_reporter(app: web.Application) -> AsyncIterator[None]:
    """Every EMF_INTERVAL_S, one CloudWatch Embedded Metric Format line for the alarms."""
    config = app[CONFIG]
    if config.emf_interval == 0:
        yield
        return

    async def report() -> None:
        shipped_before = app[TRAIL].snapshot().records_shipped
        while True:
            await asyncio.sleep(config.emf_interval)
            snapshot = app[TRAIL].snapshot()
            shipped = snapshot.records_shipped - shipped_before
            shipped_before = snapshot.records_shipped
            log.info("audit metrics", extra=emf_fields(snapshot, config.service_name, shipped))
            inference = app[METRICS].inference_emf(config.service_name)
            if inference is not None:
                log.info("inference metrics", extra=inference)

    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()


def emf_fields(snapshot: AuditSnapshot, service_name: str, shipped: int) -> dict[str, object]:
    """One EMF line. `AuditRecordsShipped` counts this interval's records (the
    missing-audit-objects alarm sums it per hour against items ingested); the
    others are levels."""
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "CentralLLM/Audit",
                    "Dimensions": [["ServiceName"]],
                    "Metrics": [
                        {"Name": "AuditOldestUnshippedAgeSeconds", "Unit": "Seconds"},
                        {"Name": "AuditSpoolBytes", "Unit": "Bytes"},
                        {"Name": "AuditRecordsDropped", "Unit": "Count"},
                        {"Name": "AuditRecordsShipped", "Unit": "Count"},
                    ],
                }
            ],
        },
        "ServiceName": service_name,
        "AuditOldestUnshippedAgeSeconds": round(snapshot.oldest_unshipped_age_s or 0.0, 3),
        "AuditSpoolBytes": snapshot.spool_bytes,
        "AuditRecordsDropped": snapshot.records_dropped,
        "AuditRecordsShipped": shipped,
    }
