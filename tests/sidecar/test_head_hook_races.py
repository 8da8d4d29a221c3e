"""The head hook (Proxy._begin inside the upstream connection's data_received) against
clients that leave around vLLM's head, in the very loop turn that reads it.

The application runs in this process (aiohttp's test server, handler_cancellation on as
in workers.py), against a scripted vLLM; the turn's order of events is fixed by wrapping
`Connection.data_received`: the client's connection is lost (as a reset read in the same
turn does it: the transport closes now, aiohttp's connection_lost — which cancels the
handler — runs next) just before, or just after, vLLM's head is parsed.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import collections
import gc
import re
from pathlib import Path

import orjson
import pytest

from sidecar_audit.app import CONFIG, TRAIL, UPSTREAM
from sidecar_audit.audit_trail import AuditTrail
from sidecar_audit.proxy import Proxy
from sidecar_audit.upstream import Connection
from tests import sidecar_fixture
from tests.sidecar.garbage import our_garbage
from tests.sidecar.test_upstream import ScriptedServer
from tests.sidecar_fixture import AUDIT_HEADERS, finished_exchanges, sidecar_app

CHAT = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": [{"role": "user", "content": "hi"}]}
_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
_DONE = b"data: [DONE]\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_ANSWERS: dict[str, list[bytes | float | None]] = {
    # head alone, the body later
    "sse-head-alone": [_SSE, 0.3, _chunk(_EVENT) + _chunk(_DONE) + b"0\r\n\r\n"],
    # head and the whole body in one segment
    "sse-whole": [_SSE + _chunk(_EVENT) + _chunk(_DONE) + b"0\r\n\r\n"],
    "json-whole": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    ],
    "empty-204": [b"HTTP/1.1 204 No Content\r\n\r\n"],
}


def _request(body: bytes, answer: str) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items())
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-answer: %b\r\n%bcontent-length: %d\r\n\r\n%b"
        % (answer.encode(), head.encode(), len(body), body)
    )


def _script(n: int, request: bytes) -> list[bytes | float | None]:
    return _ANSWERS[request.split(b"x-answer: ", 1)[1].split(b"\r\n", 1)[0].decode()]


async def _one_client(url: str, answer: str) -> bytes:
    reader, writer = await asyncio.open_connection(*url[7:].split(":"))
    writer.write(_request(orjson.dumps({**CHAT, "stream": True}), answer))
    got = b""
    try:
        async with asyncio.timeout(3):
            while chunk := await reader.read(65536):
                got += chunk
    except ConnectionError:
        pass
    except TimeoutError:
        got += b"<no end in 3 s>"
    writer.close()
    return got


def _watch_the_loop(aws_endpoint_env: dict[str, str], monkeypatch) -> list[dict]:  # type: ignore[no-untyped-def]
    """Point the AWS endpoints at moto; returns what reaches the running loop's exception
    handler from now on (the caller resets the handler)."""
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    escaped: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    return escaped


def _a_well_framed_500(got: bytes) -> bool:
    head, _, body = got.partition(b"\r\n\r\n")
    body = body.removesuffix(b"<no end in 3 s>")  # kept alive: it must end where it says
    length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
    return head.startswith(b"HTTP/1.1 500 ") and length is not None and len(body) == int(length[1])


@pytest.mark.parametrize("answer", list(_ANSWERS))
@pytest.mark.parametrize("when", ["before-the-head", "after-the-head"])
async def test_a_client_lost_in_the_turn_of_vllms_head_is_one_record_and_no_cycle(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, when: str, answer: str
) -> None:
    # Before the head: the hook finds the client gone. After it: the hook answered and
    # relayed what came with the head, the client's loss is known (its transport is
    # closing) before the handler's task resumes to record: the record must not say
    # `completed` for a client that was gone before the exchange ended (on 28c8bb5 an
    # answer whose whole body came with the head was recorded completed, the held end
    # never reaching anyone). Either way: one record, no cycle, no slot leaked.
    loop = asyncio.get_running_loop()
    escaped = _watch_the_loop(aws_endpoint_env, monkeypatch)
    clients: list[asyncio.Transport] = []  # the sidecar's end of each client connection
    real_read, real_handle = Connection.data_received, Proxy.handle

    def lose_the_client() -> None:
        while clients:
            clients.pop().abort()  # is_closing() now, connection_lost a callback later

    def data_received(self: Connection, data: bytes) -> None:
        head = data.startswith(b"HTTP/1.1 ")
        if head and when == "before-the-head":
            lose_the_client()
        real_read(self, data)
        if head and when == "after-the-head":
            lose_the_client()

    async def handle(self: Proxy, request):  # type: ignore[no-untyped-def]
        clients.append(request.transport)
        return await real_handle(self, request)

    monkeypatch.setattr(Connection, "data_received", data_received)
    monkeypatch.setattr(Proxy, "handle", handle)
    upstream = await ScriptedServer(_script).start()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (app, base):
            finished = finished_exchanges(app)
            await _one_client(base, answer)  # warm
            await asyncio.sleep(0.1)
            our_garbage()
            finished.clear()
            accepted = app[TRAIL].snapshot().records_spooled
            gc.disable()
            try:
                for _ in range(3):
                    await _one_client(base, answer)
                await asyncio.sleep(0.2)  # the exchanges end on the sidecar's side
                garbage = our_garbage()
            finally:
                gc.enable()
            assert [done.outcome for done in finished] == ["client_disconnected"] * 3
            assert app[TRAIL].snapshot().records_spooled - accepted == 3
            assert garbage == [], collections.Counter(garbage)
            slots = app[UPSTREAM]._slots._value  # type: ignore[attr-defined]
            assert slots == app[CONFIG].upstream_max_connections  # none leaked
    finally:
        await upstream.stop()
        loop.set_exception_handler(None)
    assert escaped == [], escaped


async def test_a_head_hook_that_cannot_prepare_the_answer_is_a_500_not_a_bogus_answer(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
) -> None:
    # ClientStream.open must not suspend (aiohttp's prepare() is run to completion in the
    # hook); if something makes it (here an on_response_prepare handler that awaits), that
    # is a defect of ours: the record says so and the client learns it, by our 500 or a
    # cut connection, never by a well-formed answer that is not vLLM's.
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    real_build = sidecar_fixture.build_app

    async def suspends(request, response) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)

    def build_app(config):  # type: ignore[no-untyped-def]
        app = real_build(config)
        app.on_response_prepare.append(suspends)
        return app

    monkeypatch.setattr(sidecar_fixture, "build_app", build_app)
    upstream = await ScriptedServer(_script).start()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (app, base):
            finished = finished_exchanges(app)
            for answer in ("sse-whole", "json-whole"):
                got = await _one_client(base, answer)
                assert finished.pop().outcome == "sidecar_error", answer
                assert got == b"" or _a_well_framed_500(got), (answer, got[:400])
    finally:
        await upstream.stop()


def _raw(method: str, path: str, answer: str, version: str = "1.1", extra: str = "") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items())
    body = orjson.dumps({**CHAT, "stream": True}) if method == "POST" else b""
    return (
        f"{method} {path} HTTP/{version}\r\nhost: x\r\nx-answer: {answer}\r\n{head}{extra}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_pipelined_head_sse_and_closing_requests_each_get_their_own_answer(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
) -> None:
    # Three requests in one segment: a HEAD (vLLM's head says content-length 2, no body
    # follows), a stream whose whole body came with vLLM's head, a JSON answer with
    # `Connection: close`; then an HTTP/1.0 stream. Each answer starts in the hook: each
    # must be exactly its own, complete, and recorded completed.
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    answers = {
        **_ANSWERS,
        "head-json": [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
        ],
    }
    upstream = await ScriptedServer(
        lambda n, req: answers[req.split(b"x-answer: ", 1)[1].split(b"\r\n", 1)[0].decode()]
    ).start()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (app, base):
            finished = finished_exchanges(app)
            host, port = base[7:].split(":")
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                _raw("HEAD", "/v1/models", "head-json")
                + _raw("POST", "/v1/chat/completions", "sse-whole")
                + _raw("POST", "/v1/chat/completions", "json-whole", extra="connection: close\r\n")
            )
            async with asyncio.timeout(5):
                got = await reader.read(-1)  # the third answer closes the connection
            writer.close()
            first, second, third = re.split(rb"(?=HTTP/1\.1 )", got)[1:]
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\n"), got
            assert b"\r\nContent-Length: 2\r\n" in first, got
            assert second.startswith(b"HTTP/1.1 200 ") and b"chunked" in second, got
            assert second.endswith(_chunk(_EVENT) + _chunk(_DONE) + b"0\r\n\r\n"), got
            assert third.startswith(b"HTTP/1.1 200 ") and third.endswith(b"\r\n\r\n{}"), got

            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_raw("POST", "/v1/chat/completions", "sse-whole", version="1.0"))
            async with asyncio.timeout(5):
                got = await reader.read(-1)  # no chunked coding: the close ends the body
            writer.close()
            assert got.startswith(b"HTTP/1.0 200 ") and b"chunked" not in got, got
            assert got.endswith(b"\r\n\r\n" + _EVENT + _DONE), got
            await asyncio.sleep(0.1)
            assert [done.outcome for done in finished] == ["completed"] * 4
    finally:
        await upstream.stop()


@pytest.mark.parametrize("answer", ["sse-head-alone", "sse-whole", "json-whole"])
async def test_a_handler_cancelled_in_the_turn_of_vllms_head_holds_back_the_end(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, answer: str
) -> None:
    # The sidecar stopping (aiohttp cancels the handlers still running) in the turn that
    # read vLLM's head, after the hook answered: the client still there must not get a
    # complete answer (its end was held for the record), the record says shutdown, the
    # connection ends, and nothing is left for the GC or escapes to the loop.
    loop = asyncio.get_running_loop()
    escaped = _watch_the_loop(aws_endpoint_env, monkeypatch)
    handlers: list[asyncio.Task] = []
    real_read, real_handle = Connection.data_received, Proxy.handle

    def data_received(self: Connection, data: bytes) -> None:
        real_read(self, data)
        if data.startswith(b"HTTP/1.1 ") and handlers:
            handlers.pop().cancel()

    async def handle(self: Proxy, request):  # type: ignore[no-untyped-def]
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        return await real_handle(self, request)

    monkeypatch.setattr(Connection, "data_received", data_received)
    monkeypatch.setattr(Proxy, "handle", handle)
    upstream = await ScriptedServer(_script).start()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (app, base):
            finished = finished_exchanges(app)
            await _one_client(base, answer)  # warm
            await asyncio.sleep(0.1)
            our_garbage()
            finished.clear()
            gc.disable()
            try:
                got = [await _one_client(base, answer) for _ in range(2)]
                await asyncio.sleep(0.2)
                garbage = our_garbage()
            finally:
                gc.enable()
            for one in got:
                assert one.startswith(b"HTTP/1.1 200 "), one
                assert not one.endswith(b"<no end in 3 s>"), one  # the connection ended
                assert not one.endswith((b"0\r\n\r\n", b"{}")), one  # the end was held
            records = [done.record for done in finished]
            assert [r["outcome"] for r in records] == ["sidecar_error"] * 2
            assert [r["error"]["type"] for r in records] == ["sidecar_shutdown"] * 2
            assert garbage == [], collections.Counter(garbage)
            slots = app[UPSTREAM]._slots._value  # type: ignore[attr-defined]
            assert slots == app[CONFIG].upstream_max_connections
    finally:
        await upstream.stop()
        loop.set_exception_handler(None)
    assert escaped == [], escaped


_BODYLESS: dict[str, tuple[bytes, bytes]] = {
    # (the client's request line, vLLM's whole answer)
    "204": (b"POST /v1/chat/completions", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "length-0": (b"POST /v1/chat/completions", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    # Starlette answers HEAD on every GET route: the head of the GET's answer, no body
    "HEAD": (
        b"HEAD /v1/models",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 120\r\n\r\n",
    ),
}


@pytest.mark.parametrize("case", list(_BODYLESS))
async def test_an_answer_without_a_body_leaves_only_after_its_record(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, case: str
) -> None:
    # The head of an answer that has no body by definition is the whole answer: it must
    # wait for the record like `data: [DONE]` and a body's last bytes do (proxy.py). On
    # 28c8bb5 (and before it) it left at once, before the record was spooled.
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    line, vllm_answer = _BODYLESS[case]
    order: list[str] = []
    port: list[int] = []
    real_accept = AuditTrail.accept

    def accept(self: AuditTrail, done) -> None:  # type: ignore[no-untyped-def]
        order.append("record spooled")
        real_accept(self, done)

    def recording(real):  # type: ignore[no-untyped-def]
        def write(self, data) -> None:  # type: ignore[no-untyped-def]
            sockname = self.get_extra_info("sockname")
            if port and sockname is not None and sockname[1] == port[0]:
                order.append("bytes to the client")
            real(self, data)

        return write

    transport = asyncio.selector_events._SelectorSocketTransport  # the tests' loop
    monkeypatch.setattr(AuditTrail, "accept", accept)
    monkeypatch.setattr(transport, "write", recording(transport.write))
    monkeypatch.setattr(transport, "writelines", recording(transport.writelines))
    upstream = await ScriptedServer(lambda n, request: [vllm_answer]).start()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (_, base):
            port.append(int(base.rsplit(":", 1)[1]))
            head = "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items()).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port[0])
            writer.write(line + b" HTTP/1.1\r\nhost: x\r\n" + head + b"content-length: 0\r\n\r\n")
            async with asyncio.timeout(5):
                got = await reader.readuntil(b"\r\n\r\n")
            writer.close()
    finally:
        await upstream.stop()
    assert got.startswith(vllm_answer.split(b"\r\n", 1)[0]), got
    assert order[:2] == ["record spooled", "bytes to the client"], order
