"""SIGTERM during long streams: listener closed, streams completed, spool drained, exit 0.

The flush interval is far longer than the test, so nothing ships on its own:
every record reaches S3 through the shutdown drain. After exit the spool
directory holds no segment and S3 holds every record, the streams' included
(outcome `completed`, every token counted).
"""

from __future__ import annotations

import asyncio
import signal
import socket

import aiohttp
import orjson

from tests.faults.load import chat_body, new_id, run_load
from tests.faults.observe import log_objects, logged, wait_for
from tests.faults.reconcile import assert_exactly_once, report, wait_reconciled
from tests.sidecar_fixture import AUDIT_HEADERS, StartSidecar
from tests.standin_fixture import Standin

STREAMS = 8
TOKENS = 40
LONG_STREAM = {"x-standin-itl-ms": "75", "x-standin-tokens": "1000"}  # max_tokens: ~3 s each


async def test_sigterm_during_long_streams_completes_them_drains_and_exits_0(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        AUDIT_FLUSH_INTERVAL_S="600",
        SHUTDOWN_GRACE_S="30",
        SHUTDOWN_SHIP_S="15",
    )
    short = await run_load(sidecar.url, 10, 5, "term-short")
    assert [a.status for a in short.answers] == [200] * 10
    port = int(sidecar.url.rsplit(":", 1)[1])
    started = [asyncio.Event() for _ in range(STREAMS)]
    async with aiohttp.ClientSession() as session:
        streams = [
            asyncio.create_task(_long_stream(session, sidecar.url, new_id("term-long"), event))
            for event in started
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
        assert _accepts(port)

        sidecar.proc.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for, lambda: _accepts(port), lambda up: not up, "closing")
        in_flight_when_closed = sum(not s.done() for s in streams)
        results = await asyncio.gather(*streams)
    code = await asyncio.to_thread(sidecar.proc.wait, 60)

    assert in_flight_when_closed == STREAMS, "the listener must close while streams still run"
    for request_id, tokens, done in results:
        assert (tokens, done) == (TOKENS, True), request_id
    assert code == 0, sidecar.proc.log()[-2000:]
    left = [p.name for p in sidecar.spool_dir.iterdir() if p.suffix in (".open", ".seg")]
    assert left == []
    [drained] = logged(sidecar.log_lines(), "audit spool drained")
    assert drained["segmentsLeft"] == 0

    answered = {a.request_id for a in short.answers} | {r[0] for r in results}
    result = await asyncio.to_thread(
        wait_reconciled, sidecar.moto_url, sidecar.bucket, answered, (), 5.0
    )
    report("sigterm", result, long_streams=STREAMS, exit_code=code)
    assert_exactly_once(result)
    records = sidecar.audit().by_id()
    for request_id, _, _ in results:
        assert records[request_id]["outcome"] == "completed"
        assert records[request_id]["usage"]["completionTokens"] == TOKENS
    log_objects(sidecar.all_log_lines())


async def _long_stream(
    session: aiohttp.ClientSession, base_url: str, request_id: str, started: asyncio.Event
) -> tuple[str, int, bool]:
    """Read one stream to its end: (request id, completion tokens by usage, [DONE] seen)."""
    headers = {**AUDIT_HEADERS, **LONG_STREAM, "x-request-id": request_id}
    body = orjson.dumps(chat_body("a long story", stream=True, max_tokens=TOKENS))
    tokens, done, buffer = 0, False, b""
    async with session.post(
        f"{base_url}/v1/chat/completions",
        data=body,
        headers={**headers, "content-type": "application/json"},
    ) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            started.set()
            buffer += chunk
    for event in buffer.split(b"\n\n"):
        data = event.removeprefix(b"data: ").strip()
        if data == b"[DONE]":
            done = True
        elif data:
            usage = orjson.loads(data).get("usage")
            if usage:
                tokens = usage["completion_tokens"]
    return request_id, tokens, done


def _accepts(port: int) -> bool:
    """Whether a new TCP connection to the port is accepted."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
