"""`aiohttp-bare`: the smallest aiohttp streaming reverse proxy, the floor for any aiohttp proxy.

The same stack as the sidecar (aiohttp server and client, uvloop, one event
loop) doing only what every proxy must: read the request, send it upstream on a
pooled connection, write each upstream chunk to the client as it arrives. No
audit, no capture, no checks. The gap between this row and nginx is what the
Python stack costs; the gap between this row and `sidecar` is what auditing
costs. Not a product: it forwards every path and drops hop-by-hop headers only
roughly.

Run by the harness as `python -m bench.bare_proxy --port P --upstream URL`.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

from bench.children import Child, free_port, python_module, repo_pythonpath, wait_ready
from bench.target import ChildRunning, LaunchContext, Target

_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def session_ctx(app: web.Application):
        connector = aiohttp.TCPConnector(limit=2048, keepalive_timeout=4)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app["session"] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        async with app["session"].request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        ) as up:
            response = web.StreamResponse(status=up.status)
            for name, value in up.headers.items():
                if name.lower() not in _DROP:
                    response.headers.add(name, value)
            if up.content_length is not None:
                response.content_length = up.content_length
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def start_bare_proxy(ctx: LaunchContext) -> ChildRunning:
    port = free_port()
    child = Child(
        f"aiohttp-bare-{ctx.cell_id}",
        python_module("bench.bare_proxy", "--port", str(port), "--upstream", ctx.upstream.url),
        log_dir=ctx.log_dir,
        env=repo_pythonpath(),
    )
    wait_ready(child, f"http://127.0.0.1:{port}/v1/models", timeout=30)
    target = Target("aiohttp-bare", "127.0.0.1", port, ctx.upstream.model, pids=(child.pid,))
    return ChildRunning(target, child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
