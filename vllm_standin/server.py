"""Running the stand-in: an async context manager for in-process use, and the CLI loop.

Invariants: the server binds before `running_standin` yields (so `.url` is connectable,
port 0 resolved to the real port); idle keep-alive connections close after
`options.keepalive_s` (vLLM: uvicorn `timeout_keep_alive`); a client disconnect cancels
its handler (vLLM aborts the request), which the journal records as `aborted`;
shutdown waits at most `SHUTDOWN_GRACE_S` for in-flight handlers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from vllm_standin.app import build_app
from vllm_standin.journal import Journal
from vllm_standin.logs import configure, event
from vllm_standin.options import StandinOptions
from vllm_standin.runtime import RUNTIME

SHUTDOWN_GRACE_S = 1.0
MAX_HEADER_BYTES = 1024 * 1024  # h11 in vLLM allows 4 MiB of headers; 1 MiB per line here
MAX_HEADERS = 256  # vLLM's H11_MAX_HEADER_COUNT_DEFAULT


@dataclass(frozen=True, slots=True)
class RunningStandin:
    url: str
    host: str
    port: int
    options: StandinOptions
    journal: Journal


@asynccontextmanager
async def running_standin(options: StandinOptions) -> AsyncIterator[RunningStandin]:
    """Serve `options` on this event loop until the block exits."""
    app = build_app(options)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=options.keepalive_s,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_S,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS,
        # uvicorn (vLLM's server) never undoes a request's Content-Encoding: the body
        # reaches the JSON parser as sent (a gzip body is then not JSON: vLLM's 400).
        auto_decompress=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield RunningStandin(
            url=f"http://{host}:{port}",
            host=host,
            port=port,
            options=options,
            journal=app[RUNTIME].journal,
        )
    finally:
        await runner.cleanup()


async def serve_until_signalled(options: StandinOptions) -> None:
    """The CLI's main coroutine: serve until SIGTERM or SIGINT."""
    logger = configure()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_standin(options) as running:
        event(
            logger,
            "listening",
            url=running.url,
            model=options.model,
            ttft_ms=options.ttft_ms,
            itl_ms=options.itl_ms,
            tokens=options.tokens,
            keepalive_s=options.keepalive_s,
            loop=type(loop).__module__,
        )
        await stop.wait()
        event(logger, "stopping")
    event(logger, "stopped")
