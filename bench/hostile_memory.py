"""The hostile-memory row: the sidecar's peak RSS with four concurrent 32 MB JSON bodies.

`python -m bench.hostile_memory` (or `scripts/benchmark --hostile-memory`): for each
worst-case JSON shape (issue #10; the shapes of `tests/hostile/test_memory.py`), a
fresh sidecar in front of an upstream that reads and discards bodies (so only the
sidecar's memory counts) gets one small warm-up request, then four concurrent 32 MB
bodies. Peak RSS is the sidecar's VmHWM from /proc (the process's high-water mark,
so nothing between samples is missed); the row gives the baseline, the peak, and the
peak added per in-flight request as a multiple of the body (target ≤ 4×).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from bench.audit_s3 import LOCAL_AWS_ENV, REGION, create_bucket
from bench.children import Child, free_port, python_module, wait_http, wait_ready

BODY_BYTES = 32 * 1024 * 1024 - 4096
CONCURRENT = 4
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
AUDIT_HEADERS = {
    "x-llm-source": "bench",
    "x-llm-user": "bench",
    "x-llm-request-type": "chat",
    "content-type": "application/json",
}


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def hostile_bodies(size: int) -> dict[str, bytes]:
    """JSON shapes that cost the most per byte once parsed into objects."""
    head = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})[:-1]

    def fill(unit: bytes) -> bytes:
        count = (size - len(head) - 32) // len(unit)
        return head + b',"metadata":[' + unit * count + b"0]}"

    nested = head + b',"m":' + b'{"a":' * 100 + b"1" + b"}" * 100 + b","
    return {
        "empty objects": fill(b"{},"),
        "empty arrays": fill(b"[],"),
        "small floats": fill(b"1.5,"),
        "nested": nested + fill(b"[1],")[len(head) + 1 :],
    }


async def discard_upstream(port: int) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        async for _ in request.content.iter_chunked(1 << 20):
            pass
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _start_sidecar(workdir: Path, s3: str, upstream: str, name: str) -> tuple[Child, str]:
    bucket = f"central-llm-audit-mem-{free_port()}"
    create_bucket(s3, bucket, REGION)
    port = free_port()
    env = {
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": s3,
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port(avoid={port})),
        "UPSTREAM_URL": upstream,
        "AUDIT_BUCKET": bucket,
        "AUDIT_SPOOL_DIR": str(workdir / f"spool-{name}"),
    }
    child = Child(f"sidecar-{name}", python_module("sidecar_audit"), log_dir=workdir, env=env)
    wait_ready(child, f"http://127.0.0.1:{port}/health", timeout=60)
    return child, f"http://127.0.0.1:{port}"


async def _measure(url: str, pid: int, body: bytes) -> tuple[int, int, list[int]]:
    async with aiohttp.ClientSession() as session:
        endpoint = f"{url}/v1/chat/completions"
        async with session.post(endpoint, data=b"{}", headers=AUDIT_HEADERS) as warm:
            await warm.read()
        baseline = vm_hwm_bytes(pid)

        async def one() -> int:
            async with session.post(endpoint, data=body, headers=AUDIT_HEADERS) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
    return baseline, vm_hwm_bytes(pid), list(statuses)


async def run(workdir: Path) -> list[dict[str, object]]:
    moto_port = free_port()
    moto = Child(
        "moto",
        python_module("moto.server", "-H", "127.0.0.1", "-p", str(moto_port)),
        log_dir=workdir,
    )
    s3 = f"http://127.0.0.1:{moto_port}"
    up_port = free_port()
    upstream = await discard_upstream(up_port)
    rows: list[dict[str, object]] = []
    try:
        wait_http(f"{s3}/moto-api/", moto)
        for shape, body in hostile_bodies(BODY_BYTES).items():
            child, url = _start_sidecar(
                workdir, s3, f"http://127.0.0.1:{up_port}", shape.replace(" ", "-")
            )
            try:
                baseline, peak, statuses = await _measure(url, child.pid, body)
            finally:
                child.stop(grace_s=30)
            per_request = (peak - baseline) / CONCURRENT / len(body)
            rows.append(
                {
                    "shape": shape,
                    "body_mb": round(len(body) / 2**20, 1),
                    "baseline_mb": round(baseline / 2**20, 1),
                    "peak_mb": round(peak / 2**20, 1),
                    "x_body_per_request": round(per_request, 2),
                    "statuses": statuses,
                }
            )
    finally:
        await upstream.cleanup()
        moto.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_memory", description=__doc__)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="central-llm-mem-") as tmp:
        rows = asyncio.run(run(Path(tmp)))
    print(
        f"{'shape':<14} {'body MB':>8} {'base MB':>8} {'peak MB':>8} {'x body/req':>11}  statuses"
    )
    for row in rows:
        print(
            f"{row['shape']:<14} {row['body_mb']:>8} {row['baseline_mb']:>8} {row['peak_mb']:>8} "
            f"{row['x_body_per_request']:>11}  {row['statuses']}"
        )
    if args.output:
        args.output.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    ok = all(row["statuses"] == [200] * CONCURRENT for row in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
