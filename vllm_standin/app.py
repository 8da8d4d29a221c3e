"""The aiohttp application: routes, the journal middleware, FastAPI-style 404/405, headers.

Invariants: every request outside `/_standin/` is journaled before its handler runs and
closed exactly once (`completed` when the handler returns, `aborted` when the client's
disconnect cancels it or breaks a write); responses carry `server: uvicorn` like
vLLM's, and `X-Request-Id` only when `enable_request_id_headers` is set (vLLM's
`--enable-request-id-headers`).
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from vllm_standin import basic_routes, metrics, observe
from vllm_standin.errors import detail_body
from vllm_standin.journal import ABORTED, COMPLETED
from vllm_standin.options import StandinOptions
from vllm_standin.respond import send_bytes
from vllm_standin.runtime import ENTRY, RUNTIME, Runtime

MAX_BODY_BYTES = 256 * 1024 * 1024  # uvicorn sets no body limit; keep one that cannot bite


@web.middleware
async def journal_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(observe.PREFIX):
        return await handler(request)
    journal = request.app[RUNTIME].journal
    body = await request.read()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    entry = journal.open(request.method, request.path, request.query_string, headers, body)
    request[ENTRY] = entry
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        journal.close(entry, ABORTED)
        raise
    except ConnectionResetError:
        journal.close(entry, ABORTED)
        return web.Response(status=499)  # the client is gone; nothing reaches it
    if entry.status is None:
        entry.status = response.status
    journal.close(entry, COMPLETED)
    return response


@web.middleware
async def fastapi_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Starlette's router errors answered as FastAPI's default handler does."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return await send_bytes(request, 404, detail_body("Not Found"))
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return await send_bytes(
            request, 405, detail_body("Method Not Allowed"), headers={"Allow": allow}
        )


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "uvicorn"
    if request.app[RUNTIME].options.enable_request_id_headers:
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id", uuid.uuid4().hex)


def build_app(options: StandinOptions) -> web.Application:
    """A ready-to-run application for `options` (nothing starts until it is run)."""
    app = web.Application(
        middlewares=[journal_requests, fastapi_http_errors], client_max_size=MAX_BODY_BYTES
    )
    app[RUNTIME] = Runtime.create(options)
    app.on_response_prepare.append(_stamp_headers)
    app.add_routes(basic_routes.routes())
    app.add_routes(observe.routes())
    metrics.install(app)
    return app
