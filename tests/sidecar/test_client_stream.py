"""client_stream.py's assumptions about aiohttp, one test each, against a real aiohttp server.

The module docstring lists them: (1) `prepare()` buffers the head and
`send_headers()` writes it at once; (2) after the head, transport writes are
the body and chunked coding is ours to frame, `write_eof` still ends it;
(3) a response told not to send its head at once keeps it for `write_eof()`;
(4) `writing_paused` + `drain()` tell a slow client by an event. If an aiohttp
upgrade changes any of these, the matching test fails here before the proxy
misbehaves.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools
import pytest
from aiohttp import web

from sidecar_audit.client_stream import ClientStream
from sidecar_audit.upstream import ClientGone, ProtocolStateError

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> int:
        app = web.Application()
        app.router.add_route("*", "/", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return runner.addresses[0][1]

    yield start
    for runner in runners:
        await runner.cleanup()


class Parsed:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False
        self.head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def fill_until_congested(stream: ClientStream) -> None:
    """Write until the transport's buffer passes its high-water mark (the event source)."""
    while not stream.congested:
        stream.write(b"x" * 65536)
        await asyncio.sleep(0)


def fill_then_drain(stall_s: float, outcome: list[str]) -> Handler:
    """A handler that congests the transport, then drains it: `outcome` gets "drained",
    "cut" (ClientGone), or the name of anything else that ended the drain."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = ClientStream.open(response, request)
        await fill_until_congested(stream)
        try:
            await stream.drain(stall_s)
            outcome.append("drained")
        except ClientGone:
            outcome.append("cut")
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        return response

    return handler


async def get(port: int, until: Callable[[Parsed], bool]) -> Parsed:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    parsed = Parsed()
    parser = httptools.HttpResponseParser(parsed)
    try:
        async with asyncio.timeout(5):
            while not until(parsed):
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
    finally:
        writer.close()
    return parsed


@pytest.mark.parametrize("status", [204, 200])
async def test_a_held_head_leaves_only_with_the_end(serve, status) -> None:
    # behaviour 3: an answer without a body keeps its head (the whole answer) until end()
    opened, released = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"x-marker": "1"})
        if status == 200:
            response.content_length = 0
        stream = ClientStream.open(response, request, hold_head=True)
        with pytest.raises(ProtocolStateError):
            stream.write(b"a body where none may be")
        opened.set()
        await released.wait()
        await stream.end(b"", 5)
        return response

    port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await opened.wait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await reader.read(1)  # nothing before end()
    released.set()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"x-marker: 1" in head.lower()


async def test_the_head_leaves_as_soon_as_the_stream_opens(serve) -> None:
    released = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"x-marker": "1"})
        stream = ClientStream.open(response, request)
        await released.wait()  # no body yet: the head must already be with the client
        await stream.end(b"", 5)
        return response

    port = await serve(handler)
    parsed = await get(port, lambda p: p.head_done)
    assert parsed.head_done and parsed.headers["x-marker"] == "1"
    released.set()


@pytest.mark.parametrize("length", [None, 6])
async def test_body_bytes_are_framed_as_aiohttp_chose_and_end_with_write_eof(serve, length) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if length is not None:
            response.content_length = length
        stream = ClientStream.open(response, request)
        stream.write(b"abc")
        await stream.end(b"xyz", 5)
        with pytest.raises(ProtocolStateError):
            stream.write(b"late")
        return response

    port = await serve(handler)
    parsed = await get(port, lambda p: p.complete)
    assert parsed.complete and b"".join(parsed.body) == b"abcxyz"
    if length is None:
        assert parsed.headers["transfer-encoding"] == "chunked"
    else:
        assert parsed.headers["content-length"] == "6"


async def test_a_client_that_reads_nothing_is_told_by_an_event_and_cut_after_the_stall(
    serve,
) -> None:
    outcome: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = ClientStream.open(response, request)
        await fill_until_congested(stream)
        outcome.append("congested")
        try:
            await stream.drain(0.5)
        except ClientGone as exc:
            outcome.append(str(exc))
        return response

    port = await serve(handler)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if len(outcome) == 2:
            break
        await asyncio.sleep(0.1)
    sock.close()
    assert outcome[:1] == ["congested"]
    assert outcome[1:] == ["the client read nothing for 0.5 s"]


async def test_a_client_that_drains_releases_the_wait(serve) -> None:
    drained: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = ClientStream.open(response, request)
        await fill_until_congested(stream)
        await stream.drain(10)
        drained.append(True)
        await stream.end(b"", 5)
        return response

    port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    parsed = Parsed()
    parser = httptools.HttpResponseParser(parsed)
    reader._transport.pause_reading()  # type: ignore[attr-defined]  # read nothing for a while
    await asyncio.sleep(0.5)
    reader._transport.resume_reading()  # type: ignore[attr-defined]
    async with asyncio.timeout(20):
        while not parsed.complete:
            data = await reader.read(1 << 20)
            if not data:
                break
            parser.feed_data(data)
    writer.close()
    assert parsed.complete and drained == [True]


async def test_a_slow_but_steady_reader_is_not_cut_while_it_makes_progress(serve) -> None:
    """Megabytes sit in kernel buffers: draining them takes a slow client longer than the
    stall limit, but every second it takes some bytes, so it is not stalled."""
    outcome: list[str] = []
    port = await serve(fill_then_drain(0.5, outcome))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    taken = 0
    loop = asyncio.get_running_loop()
    until = loop.time() + 3.0  # six stall periods of steady, slow reading
    while loop.time() < until and not outcome:
        taken += len(await reader.read(4096))
        await asyncio.sleep(0.01)
    assert outcome in ([], ["drained"]), f"cut after {taken} bytes"
    writer.close()


async def test_a_reader_slower_than_the_stall_limit_is_waited_for_again_not_cancelled(
    serve,
) -> None:
    """A reader so slow that a whole stall period passes with our buffer still above its
    low mark, yet taking bytes in it: the next period must be waited for like the first.
    aiohttp's drain() awaits the protocol's one waiter future itself, so the stall
    timeout's cancellation cancelled that future, and every later drain() raised
    CancelledError at once: the handler died as if the server stopped (the proxy
    recorded `sidecar_shutdown` for a client that was only slow)."""
    outcome: list[str] = []
    port = await serve(fill_then_drain(0.3, outcome))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0  # several stall periods, each with some bytes taken
    while loop.time() < until and not outcome:
        await reader.read(2048)
        await asyncio.sleep(0.1)
    writer.close()
    assert outcome in ([], ["drained"]), outcome


async def test_a_client_gone_before_the_drain_is_gone_not_a_defect_nor_a_spin(serve) -> None:
    """The client resets the connection after a write paused the transport and before the
    proxy's task reaches drain() (both in one loop iteration, a hostile client's timing).
    aiohttp leaves `writing_paused` set and its `drain()` returns at once once the
    connection is lost, so drain() must see the closed transport: neither the ioctl on
    a closed socket (fd -1) nor a `while congested` loop that never suspends."""
    outcome: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = ClientStream.open(response, request)
        await fill_until_congested(stream)
        outcome.append("congested")
        # the reset has been seen (connection_lost: no event to wait on)
        while request.protocol.transport is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        writer, calls = stream._writer, 0
        real_drain = writer.drain

        async def counted_drain() -> None:  # fails the test instead of hanging the loop
            nonlocal calls
            calls += 1
            if calls > 1000:
                raise AssertionError("drain() spins without suspending")
            await real_drain()

        writer.drain = counted_drain  # type: ignore[method-assign]
        try:
            await stream.drain(0.5)
            outcome.append("drained")
        except ClientGone as exc:
            outcome.append(str(exc))
        except Exception as exc:  # what the proxy would record as a defect
            outcome.append(f"{type(exc).__name__}: {exc}")
        return response

    port = await serve(handler)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if outcome:
            break
        await asyncio.sleep(0.05)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the kernel drops the unread bytes
    for _ in range(100):
        if len(outcome) == 2:
            break
        await asyncio.sleep(0.05)
    assert outcome == ["congested", "the client closed the connection"]


async def test_a_client_cut_for_stalling_does_not_keep_its_connection(serve) -> None:
    """A client that reads nothing is cut; its connection must go with it. Closed
    gracefully, the transport would wait to flush our buffer and the kernel's send
    queue (megabytes) to a client that never reads: the socket and its buffers stay
    for as long as a hostile client keeps its end open."""
    outcome: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = ClientStream.open(response, request)
        await fill_until_congested(stream)
        try:
            await stream.drain(0.5)
        except ClientGone as exc:
            outcome.append(str(exc))
        for _ in range(50):  # connection_lost: no event to wait on
            if request.protocol.transport is None:
                outcome.append("released")
                break
            await asyncio.sleep(0.05)
        else:
            outcome.append("held")
        return response

    port = await serve(handler)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(200):  # the client keeps its end open and reads nothing
        if len(outcome) == 2:
            break
        await asyncio.sleep(0.05)
    assert outcome == ["the client read nothing for 0.5 s", "released"]
    # Reset, not closed after the data: the kernel dropped the megabytes still queued
    # (else it keeps trying to send them). The client's socket: TCP_CLOSE (7) once reset.
    for _ in range(50):
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 7:
            break
        await asyncio.sleep(0.05)
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    sock.close()
    assert state == 7, f"the client's connection is still in TCP state {state}"


async def test_a_prepare_that_would_suspend_is_a_defect_not_a_lost_head() -> None:
    # open() runs aiohttp's prepare() to completion in the caller's call (behaviour 1):
    # an on_response_prepare handler that awaits something would suspend it, and that
    # must fail loudly rather than leave a half-run coroutine and a client with no head.
    outcome: list[BaseException] = []

    async def suspends(request: web.Request, response: web.StreamResponse) -> None:
        await asyncio.sleep(0)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        try:
            ClientStream.open(response, request)
        except ProtocolStateError as exc:
            outcome.append(exc)
        return web.Response(status=500, text="defect")

    app = web.Application()
    app.on_response_prepare.append(suspends)
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await reader.readline()
        writer.close()
    finally:
        await runner.cleanup()
    assert [str(exc) for exc in outcome] == ["client stream: prepare() suspended"]
    assert status.startswith(b"HTTP/1.1 500")
