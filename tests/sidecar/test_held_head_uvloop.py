"""Held heads (answers without a body) and the head hook, on asyncio's loop and on uvloop
(the production loop, workers.py): the in-process app is run by a runner of either loop.

What is asserted: the head of an answer without a body reaches the client only after its
record (peeked on the client's socket when the record is spooled: loop-independent), for
a plain client, an `Expect: 100-continue` client, vLLM's answer split byte by byte, and a
client that leaves as the record is spooled; exactly one record, completed; no upstream
slot leaked; nothing escaping to the loop's exception handler. The in-turn races of
test_head_hook_races.py are run again on uvloop. A client slower than the stall limit
that still takes bytes is served to the end and recorded completed (on 26cc41b the second
stall period raised CancelledError: recorded sidecar_shutdown).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from sidecar_audit.app import CONFIG, UPSTREAM
from sidecar_audit.audit_trail import AuditTrail
from sidecar_audit.proxy import Proxy
from tests.sidecar import test_head_hook_races as races
from tests.sidecar.garbage import our_garbage
from tests.sidecar.test_upstream import ScriptedServer
from tests.sidecar_fixture import AUDIT_HEADERS, finished_exchanges, sidecar_app

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
STREAM = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
_DONE = b"data: [DONE]\n\n"
BIG = b"x" * (8 * 1024 * 1024)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


ANSWERS = {
    "204": [b"HTTP/1.1 204 No Content\r\nx-n: 204\r\n\r\n"],
    "204-stray": [b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello"],
    "sse204": [b"HTTP/1.1 204 No Content\r\ncontent-type: text/event-stream\r\n\r\n"],
    "100-204": [b"HTTP/1.1 100 Continue\r\n\r\n", 0.05, b"HTTP/1.1 204 No Content\r\n\r\n"],
    "304": [b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"],
    "len0": [b"HTTP/1.1 200 OK\r\nx-n: len0\r\ncontent-length: 0\r\n\r\n"],
    "head": [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 120\r\n\r\n"],
    "head-chunked": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    ],
    "sse": [_SSE + _chunk(_EVENT) + _chunk(_DONE) + b"0\r\n\r\n"],
    "big": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % len(BIG),
        BIG,
    ],
}
BODYLESS = {  # (method, path, answer, request body)
    "204": (b"POST", b"/v1/chat/completions", "204", b""),
    "204-stray": (b"POST", b"/v1/chat/completions", "204-stray", b""),
    "sse204": (b"POST", b"/v1/chat/completions", "sse204", STREAM),
    "100-204": (b"POST", b"/v1/chat/completions", "100-204", b""),
    "304": (b"GET", b"/v1/models", "304", b""),
    "len0": (b"POST", b"/v1/chat/completions", "len0", b""),
    "HEAD": (b"HEAD", b"/v1/models", "head", b""),
    "HEAD-chunked": (b"HEAD", b"/v1/models", "head-chunked", b""),
}


def _script(n: int, request: bytes) -> list[bytes | float | None]:
    return ANSWERS[request.split(b"x-answer: ", 1)[1].split(b"\r\n", 1)[0].decode()]


def _bytewise(n: int, request: bytes) -> list[bytes | float | None]:
    return [bytes([b]) for piece in _script(n, request) if isinstance(piece, bytes) for b in piece]


def _request(method: bytes, path: bytes, answer: str, body: bytes, extra: bytes = b"") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items()).encode()
    return b"%b %b HTTP/1.1\r\nhost: x\r\nx-answer: %b\r\n%b%bcontent-length: %d\r\n\r\n%b" % (
        method,
        path,
        answer.encode(),
        head,
        extra,
        len(body),
        body,
    )


def _run(loop_name: str, coro) -> object:  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro)


async def _held(moto: str, tmp_path: Path, case: str, mode: str) -> tuple[list, bytes, list]:
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    seen: list[tuple[str, bytes]] = []
    client = socket.socket()
    clients: list[asyncio.BaseTransport] = []
    real_accept, real_handle = AuditTrail.accept, Proxy.handle

    def accept(self: AuditTrail, done) -> None:  # type: ignore[no-untyped-def]
        try:
            peek = client.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            peek = b""
        seen.append((done.outcome, peek))
        real_accept(self, done)
        if mode == "leave":  # between the record and the held head's write_eof
            for transport in clients:
                transport.abort()

    async def handle(self: Proxy, request):  # type: ignore[no-untyped-def]
        clients.append(request.transport)
        return await real_handle(self, request)

    AuditTrail.accept = accept  # type: ignore[method-assign]
    Proxy.handle = handle  # type: ignore[method-assign]
    upstream = await ScriptedServer(_bytewise if mode == "bytewise" else _script).start()
    try:
        async with sidecar_app(upstream.url, moto, tmp_path) as (app, base):
            host, port = base[7:].split(":")
            client.setblocking(False)
            await loop.sock_connect(client, (host, int(port)))
            method, path, answer, body = BODYLESS[case]
            extra = b"expect: 100-continue\r\n" if mode == "expect" else b""
            request = _request(method, path, answer, body, extra)
            if mode == "expect":
                head, _, rest = request.partition(b"\r\n\r\n")
                await loop.sock_sendall(client, head + b"\r\n\r\n")
                async with asyncio.timeout(2):
                    interim = await loop.sock_recv(client, 100)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
                await loop.sock_sendall(client, rest)
            else:
                await loop.sock_sendall(client, request)
            got = b""
            try:
                async with asyncio.timeout(1):
                    while chunk := await loop.sock_recv(client, 65536):
                        got += chunk
            except (TimeoutError, ConnectionError):
                pass
            client.close()
            await asyncio.sleep(0.1)
            slots = app[UPSTREAM]._slots._value  # type: ignore[attr-defined]
            assert slots == app[CONFIG].upstream_max_connections
    finally:
        AuditTrail.accept = real_accept  # type: ignore[method-assign]
        Proxy.handle = real_handle  # type: ignore[method-assign]
        await upstream.stop()
        loop.set_exception_handler(None)
    return seen, got, escaped


MODES = ("plain", "expect", "bytewise", "leave")
# Within the suite's time budget: the production loop (uvloop) gets every case plainly and
# three of them in every mode, asyncio's loop (the other in-process tests') one case in
# every mode.
HELD_RUNS = sorted(
    {("uvloop", case, "plain") for case in BODYLESS}
    | {("uvloop", case, mode) for case in ("204", "len0", "HEAD") for mode in MODES}
    | {("asyncio", "204", mode) for mode in MODES}
)


@pytest.mark.parametrize(("loop_name", "case", "mode"), HELD_RUNS)
def test_a_held_head_leaves_after_its_record_on_either_loop(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, loop_name, case, mode
) -> None:
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    seen, got, escaped = _run(loop_name, _held(moto_server, tmp_path, case, mode))  # type: ignore[misc]
    assert seen == [("completed", b"")], seen  # one record, and nothing sent before it
    if mode == "leave":
        assert got == b"", got
    else:
        status = ANSWERS[BODYLESS[case][2]][-1].split(b"\r\n", 1)[0]  # type: ignore[union-attr]
        assert got.startswith(status) and got.endswith(b"\r\n\r\n"), got
        assert b"hello" not in got and b"transfer-encoding" not in got.lower(), got
    assert escaped == [], escaped


async def _slow_reader(moto: str, tmp_path: Path) -> tuple[list[str], int, list, list[str]]:
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    upstream = await ScriptedServer(_script).start()
    try:
        settings = {"CLIENT_WRITE_STALL_S": "0.3"}
        async with sidecar_app(upstream.url, moto, tmp_path, **settings) as (app, base):
            finished = finished_exchanges(app)
            our_garbage()
            gc.disable()
            try:
                host, port = base[7:].split(":")
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                client.setblocking(False)
                await loop.sock_connect(client, (host, int(port)))
                await loop.sock_sendall(
                    client, _request(b"POST", b"/v1/chat/completions", "big", b"")
                )
                data = b""
                until = loop.time() + 1.5  # five stall periods, some KiB taken in each
                while loop.time() < until:
                    data += await loop.sock_recv(client, 65536)
                    await asyncio.sleep(0.1)
                async with asyncio.timeout(20):
                    while len(data.partition(b"\r\n\r\n")[2]) < len(BIG):
                        chunk = await loop.sock_recv(client, 1 << 20)
                        if not chunk:
                            break
                        data += chunk
                got = len(data.partition(b"\r\n\r\n")[2])
                client.close()
                await asyncio.sleep(0.1)
                garbage = our_garbage()
            finally:
                gc.enable()
            slots = app[UPSTREAM]._slots._value  # type: ignore[attr-defined]
            assert slots == app[CONFIG].upstream_max_connections
    finally:
        await upstream.stop()
        loop.set_exception_handler(None)
    return [done.outcome for done in finished], got, escaped, garbage


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_client_slower_than_the_stall_limit_that_takes_bytes_is_served_to_the_end(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, loop_name
) -> None:
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    outcomes, got, escaped, garbage = _run(loop_name, _slow_reader(moto_server, tmp_path))  # type: ignore[misc]
    assert outcomes == ["completed"], outcomes
    assert got == len(BIG), got
    assert garbage == [], collections.Counter(garbage)
    assert escaped == [], escaped


@pytest.mark.parametrize("answer", list(races._ANSWERS))
@pytest.mark.parametrize("when", ["before-the-head", "after-the-head"])
def test_on_uvloop_a_client_lost_in_the_turn_of_vllms_head(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, when, answer
) -> None:
    test = races.test_a_client_lost_in_the_turn_of_vllms_head_is_one_record_and_no_cycle
    _run("uvloop", test(moto_server, aws_endpoint_env, tmp_path, monkeypatch, when, answer))


@pytest.mark.parametrize("answer", ["sse-head-alone", "sse-whole", "json-whole"])
def test_on_uvloop_a_handler_cancelled_in_the_turn_of_vllms_head(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch, answer
) -> None:
    test = races.test_a_handler_cancelled_in_the_turn_of_vllms_head_holds_back_the_end
    _run("uvloop", test(moto_server, aws_endpoint_env, tmp_path, monkeypatch, answer))


def test_on_uvloop_pipelined_requests_each_get_their_own_answer(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
) -> None:
    test = races.test_pipelined_head_sse_and_closing_requests_each_get_their_own_answer
    _run("uvloop", test(moto_server, aws_endpoint_env, tmp_path, monkeypatch))


def test_on_uvloop_a_head_hook_that_cannot_prepare_is_a_500(
    moto_server, aws_endpoint_env, tmp_path: Path, monkeypatch
) -> None:
    test = races.test_a_head_hook_that_cannot_prepare_the_answer_is_a_500_not_a_bogus_answer
    _run("uvloop", test(moto_server, aws_endpoint_env, tmp_path, monkeypatch))
