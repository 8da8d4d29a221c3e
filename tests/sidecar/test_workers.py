"""WORKERS > 1: processes sharing the port, one spool directory, nothing lost, clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import orjson

from tests.sidecar_fixture import AUDIT_HEADERS

CHAT = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": [{"role": "user", "content": "hi"}]}


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry))
    return out


async def send(url: str, count: int) -> list[str]:
    async def one(session: aiohttp.ClientSession, i: int) -> str:
        body = {**CHAT, "stream": i % 2 == 0}
        async with session.post(
            f"{url}/v1/chat/completions",
            data=orjson.dumps(body),
            headers={**AUDIT_HEADERS, "content-type": "application/json"},
        ) as response:
            await response.read()
            assert response.status == 200
            return response.headers["x-request-id"]

    # A fresh connection per request, so the kernel spreads them over the workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(session, i) for i in range(count))))


async def metrics_answer(metrics_url: str, workers: int) -> None:
    """Worker i serves metrics on METRICS_PORT + i: all answering means all are serving."""
    base, port = metrics_url.rsplit(":", 1)
    port_number = int(port.split("/")[0])
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as session:
        for index in range(workers):
            while True:
                try:
                    async with session.get(f"{base}:{port_number + index}/metrics") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"worker {index} never served metrics"
                await asyncio.sleep(0.1)


async def test_workers_share_the_port_and_ship_everything(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, WORKERS="2")
    parent = sidecar.proc.pid
    deadline = time.monotonic() + 10
    while len(children_of(parent)) < 2:
        assert time.monotonic() < deadline, "two workers never appeared"
        await asyncio.sleep(0.1)
    workers = children_of(parent)
    await metrics_answer(sidecar.metrics_url, 2)
    ids = await send(sidecar.url, 60)
    records = sidecar.wait_for_records(ids).by_id()
    pids = {records[i]["sidecar"]["pid"] for i in ids}
    assert pids <= workers and len(pids) == 2, "both workers should have served"

    # A worker killed outright is replaced; what it spooled is shipped.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        now = children_of(parent)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        await asyncio.sleep(0.1)
    await metrics_answer(sidecar.metrics_url, 2)
    more = await send(sidecar.url, 20)
    sidecar.wait_for_records(ids + more)

    sidecar.proc.signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=30) == 0
    assert not children_of(parent)
