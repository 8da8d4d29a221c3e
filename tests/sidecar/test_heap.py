"""The request path leaves no reference cycles, whatever the outcome of the exchange.

The sidecar's application runs in this process (aiohttp's test server on
loopback, the real stand-in as vLLM, S3 on moto) so that the garbage collector
can be asked what the traffic left: with the GC disabled during the traffic,
anything of the sidecar's that only the cyclic GC could free is a defect (see
tests/sidecar/garbage.py for why it matters: GC passes stop every stream).
"""

from __future__ import annotations

import asyncio
import collections
import gc
from pathlib import Path

import aiohttp
import orjson
import pytest

from sidecar_audit.app import TRAIL
from sidecar_audit.http_response import ResponseReader
from sidecar_audit.workers import GC_YOUNG_THRESHOLD, GIL_SWITCH_INTERVAL_S
from tests.sidecar.garbage import our_garbage
from tests.sidecar.test_upstream import Collected, ScriptedServer
from tests.sidecar_fixture import AUDIT_HEADERS, sidecar_app

CHAT = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def sidecar_in_process(
    standin_session, moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
):  # type: ignore[no-untyped-def]
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    async with sidecar_app(
        standin_session.url,
        moto_server,
        tmp_path,
        AUDIT_FLUSH_INTERVAL_S="0.2",
        CLIENT_WRITE_STALL_S="1",
    ) as started:
        yield started


async def _traffic(url: str) -> None:
    headers = {**AUDIT_HEADERS, "content-type": "application/json"}
    stream = {**CHAT, "stream": True}
    async with aiohttp.ClientSession() as session:

        async def post(body: dict, path: str = "/v1/chat/completions", **extra: str) -> int:
            async with session.post(
                url + path, data=orjson.dumps(body), headers={**headers, **extra}
            ) as response:
                await response.read()
                return response.status

        statuses = [
            await post(stream),
            await post({**stream, "stream_options": {"include_usage": True}, "n": 2}),
            await post(CHAT),
            await post({"model": CHAT["model"], "prompt": "hi", "stream": True}, "/v1/completions"),
            await post(stream, **{"x-standin-scenario": "error_midstream"}),
            await post(CHAT, **{"x-standin-scenario": "http_error"}),
            await post(CHAT, "/v1/load_lora_adapter"),  # never forwarded: 404
            await post(CHAT, **{"x-llm-user": ""}),  # no identity: 400
        ]
        assert statuses[:5] == [200] * 5 and statuses[6:] == [404, 400], statuses
        async with session.get(url + "/v1/models", headers=headers) as response:
            assert response.status == 200
        # A client that leaves mid-stream, and one that leaves before the answer.
        for wait_for_first_bytes in (True, False):
            reader, writer = await asyncio.open_connection(*url[7:].split(":"))
            body = orjson.dumps({**stream, "max_tokens": 500})
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%bcontent-length: %d\r\n\r\n%b"
                % (head.encode(), len(body), body)
            )
            if wait_for_first_bytes:
                await reader.read(100)
            writer.transport.abort()
        await asyncio.sleep(0.3)  # the aborted exchanges finish on the sidecar's side


async def test_no_outcome_leaves_a_cycle_for_the_gc(sidecar_in_process) -> None:
    app, url = sidecar_in_process
    await _traffic(url)  # warm: first-use objects (clients, caches) are not per request
    our_garbage()
    accepted = app[TRAIL].snapshot().records_spooled
    gc.disable()
    try:
        for _ in range(3):
            await _traffic(url)
        assert app[TRAIL].snapshot().records_spooled - accepted == 3 * 11
        garbage = our_garbage()
        assert garbage == [], collections.Counter(garbage)
    finally:
        gc.enable()


def test_the_process_freezes_its_start_up_heap_before_serving(
    standin_session, start_sidecar
) -> None:
    sidecar = start_sidecar(standin_session.url)
    frozen = [
        orjson.loads(line)
        for line in sidecar.log_lines()
        if line.startswith("{") and "start-up heap frozen" in line
    ]
    assert len(frozen) == 1
    # botocore's models, aiohttp, the spool: far more than any per-request garbage.
    assert frozen[0]["frozenObjects"] > 20_000
    assert frozen[0]["gcThresholds"][0] == GC_YOUNG_THRESHOLD
    # The loop waits at most this long for the GIL while the shipper's thread works.
    assert frozen[0]["gilSwitchIntervalS"] == pytest.approx(GIL_SWITCH_INTERVAL_S)


def test_garbage_reported_is_freed_not_reported_again() -> None:
    # Reported garbage used to stay cyclic garbage: every later call (the next test's
    # "clean slate" included) reported it again, so tests failed by their order.
    our_garbage()
    gc.disable()
    try:
        reader = ResponseReader(Collected(), "GET")  # with its parser: a cycle
        del reader
        assert set(our_garbage()) == {"ResponseReader"}  # it and its bound callbacks
        assert our_garbage() == []
    finally:
        gc.enable()


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
_UPSTREAM_FAILURES = {  # what a scripted vLLM answers, by the request's x-script header
    b"closed": [None],  # before the head
    b"cut": [_SSE_HEAD, b"6\r\ndata: \r\n", None],  # mid-body
    b"malformed": [b"garbage\r\n\r\n"],
    b"silent": [_SSE_HEAD, 0.6],  # beyond the read timeout
    b"trailing": [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n"],
    b"interim-then-close": [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{}", None],
    b"done": [_SSE_HEAD, b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"],
}


def _upstream_script(n: int, request: bytes) -> list[bytes | float | None]:
    name = request.split(b"x-script: ", 1)[1].split(b"\r\n", 1)[0]
    return _UPSTREAM_FAILURES[name]


async def test_upstream_failures_leave_no_cycle_for_the_gc(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
) -> None:
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    headers = {**AUDIT_HEADERS, "content-type": "application/json"}

    async def traffic(url: str) -> list[int | str]:
        outcomes: list[int | str] = []
        async with aiohttp.ClientSession() as session:
            for script in _UPSTREAM_FAILURES:
                try:
                    async with session.post(
                        url,
                        data=orjson.dumps(CHAT),
                        headers={**headers, "x-script": script.decode()},
                    ) as response:
                        await response.read()
                        outcomes.append(response.status)
                except aiohttp.ClientPayloadError:
                    outcomes.append("cut")
        return outcomes

    upstream = await ScriptedServer(_upstream_script).start()
    try:
        async with sidecar_app(
            upstream.url, moto_server, tmp_path, UPSTREAM_READ_TIMEOUT_S="0.3"
        ) as (app, base):
            url = f"{base}/v1/chat/completions"
            await traffic(url)  # warm
            our_garbage()
            accepted = app[TRAIL].snapshot().records_spooled
            gc.disable()
            try:
                for _ in range(2):
                    assert await traffic(url) == [502, "cut", 502, "cut", 200, 200, 200]
                assert app[TRAIL].snapshot().records_spooled - accepted == 2 * 7
                garbage = our_garbage()
                assert garbage == [], collections.Counter(garbage)
            finally:
                gc.enable()
    finally:
        await upstream.stop()
