"""The upstream client: HTTP/1.1 framing as pure functions, and the pool against real sockets.

The pool tests run a scripted HTTP server on loopback (a plain asyncio server
that answers each request with bytes the test chooses, and counts connections),
because the cases that matter are the ones a well-behaved server rarely shows:
a keep-alive connection closed just before reuse, a body cut short, silence,
bytes after the body.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar_audit.http_response import MalformedResponse, ResponseHead, ResponseReader
from sidecar_audit.upstream import (
    ClientGone,
    Connection,
    ProtocolStateError,
    UpstreamBroken,
    UpstreamBusy,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
    Wake,
    request_head,
)
from tests.sidecar.garbage import our_garbage

# --- framing, sans I/O (llhttp through ResponseReader) ----------------------------------

SSE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"b4\r\n" + b"data: " + b"x" * 172 + b"\n\n" + b"\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
)
SSE_BODY = b"data: " + b"x" * 172 + b"\n\n" + b"data: [DONE]\n\n"


class Collected:
    """A Receiver that keeps what the reader reported."""

    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []
        self.body: list[bytes] = []
        self.ends: list[bool] = []
        self.trailing = 0

    def on_head(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def on_body(self, data: bytes) -> None:
        assert self.heads and not self.ends, "body outside head..end"
        self.body.append(data)

    def on_end(self, clean: bool) -> None:
        self.ends.append(clean)

    def on_trailing(self) -> None:
        self.trailing += 1


def read(wire: bytes, cuts: list[int] = (), method: str = "GET", eof: bool = False) -> Collected:
    got = Collected()
    reader = ResponseReader(got, method)
    start = 0
    for cut in [*cuts, len(wire)]:
        reader.feed(wire[start:cut])
        start = cut
    if eof:
        reader.eof()
    return got


def test_a_chunked_response_reads_the_same_however_the_bytes_are_split() -> None:
    for a in range(len(SSE_RESPONSE)):
        for b in (a, a + 1, a + 7):
            got = read(SSE_RESPONSE, sorted({a, min(b, len(SSE_RESPONSE))}))
            assert b"".join(got.body) == SSE_BODY, (a, b)
            assert got.ends == [True] and got.trailing == 0 and len(got.heads) == 1
    head = read(SSE_RESPONSE).heads[0]
    assert (head.status, head.reason, head.content_length) == (200, "OK", None)
    assert head.header("Content-Type") == "text/event-stream"


def test_chunk_extensions_and_trailers_are_skipped() -> None:
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n"
    got = read(wire + b"0\r\nX-Trailer: 1\r\n\r\n")
    assert b"".join(got.body) == b"hello" and got.ends == [True]


def test_bytes_after_the_end_make_the_connection_unfit() -> None:
    for extra in (b"HTTP/1.1 200 OK\r\n", b"junk", b"x"):
        got = read(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi" + extra)
        assert b"".join(got.body) == b"hi" and got.ends == [True] and got.trailing >= 1, extra


def test_keep_alive_and_framing_decide_a_clean_end() -> None:
    assert read(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx").ends == [True]
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx"
    assert read(closing).ends == [False]
    assert read(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx").ends == [False]
    until_close = read(b"HTTP/1.1 200 OK\r\n\r\nabc", eof=True)  # delimited by the close
    assert b"".join(until_close.body) == b"abc" and until_close.ends == [False]
    assert read(b"HTTP/1.1 200 OK\r\n\r\nabc").ends == []  # not over until the close
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n", method="DELETE").ends == [True]
    head_reply = read(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", method="HEAD")
    assert head_reply.ends == [False] and head_reply.body == []  # never reused after HEAD
    assert read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").ends == [True]


def test_interim_responses_are_skipped_by_the_reader() -> None:
    got = read(
        b"HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    assert [h.status for h in got.heads] == [200] and got.body == [b"ok"] and got.ends == [True]


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: \xc2\xb2\r\n\r\n",  # '²'.isdigit() is True
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhi\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiXX",
        b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
)
def test_responses_that_are_not_http_we_speak_are_refused(wire: bytes) -> None:
    with pytest.raises(MalformedResponse):
        read(wire)


def test_request_head_carries_host_length_and_headers_as_given() -> None:
    wire = request_head("POST", "/v1/chat/completions?x=1", "127.0.0.1:8001", [("A", "b")], 2)
    assert wire == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nA: b\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    assert b"Content-Length: 0" in request_head("POST", "/", "h", [], 0)
    assert b"Content-Length" not in request_head("GET", "/", "h", [], 0)


# --- the pool against a scripted server -------------------------------------------------

Script = Callable[[int, bytes], list[bytes | float | None]]


class ScriptedServer:
    """Answers the n-th request (0-based, over all connections) with `script(n, request)`.

    The script returns pieces: bytes are written, a float sleeps that long,
    None closes the connection.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                n = self.requests
                self.requests += 1
                for piece in self.script(n, head + body):
                    if piece is None:
                        writer.close()
                        return
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                    else:
                        writer.write(piece)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        # Since Python 3.12.1 wait_closed() also waits for every open connection: a
        # keep-alive connection the test left idle would hold it until the test's timeout.
        for writer in list(self._writers):
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], asyncio.Future[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def start(script: Script) -> ScriptedServer:
        server = await ScriptedServer(script).start()
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop()


def pool_for(url: str, **overrides: float) -> UpstreamPool:
    settings = {
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "keepalive_s": 4.0,
        "queue_timeout": 5.0,
        "max_connections": 8,
    }
    settings.update(overrides)
    return UpstreamPool(url, **settings)  # type: ignore[arg-type]


async def fetch(pool: UpstreamPool, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    """One exchange through the pool, the body gathered by the sink."""
    conn = await pool.request(method, "/v1/models", [("Accept", "*/*")], body)
    pieces: list[bytes] = []
    try:
        assert conn.head is not None
        conn.start_body(pieces.append)
        while await conn.wait() is not Wake.ENDED:
            pass
        return conn.head.status, b"".join(pieces)
    finally:
        pool.release(conn)


def ok(body: bytes, extra: bytes = b"") -> list[bytes | float | None]:
    return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)]


async def test_keep_alive_connections_are_reused(serve) -> None:
    server = await serve(lambda n, req: ok(b"answer %d" % n))
    pool = pool_for(server.url)
    for n in range(3):
        assert await fetch(pool) == (200, b"answer %d" % n)
    assert server.connections == 1
    pool.close()


async def test_a_connection_closed_while_idle_is_replaced_without_an_error(serve) -> None:
    # The server closes each connection right after its answer, as vLLM does after 5 s idle.
    server = await serve(lambda n, req: [*ok(b"x"), None])
    pool = pool_for(server.url)
    assert await fetch(pool) == (200, b"x")
    await asyncio.sleep(0.05)
    assert await fetch(pool) == (200, b"x")
    assert server.connections == 2
    pool.close()


async def test_a_stale_connection_found_only_on_reuse_is_retried_once(serve) -> None:
    # The server answers, then closes the connection as soon as the next request
    # arrives on it without answering: the pool must retry on a new connection.
    def script(n: int, req: bytes) -> list[bytes | float | None]:
        return [None] if n == 1 else ok(b"fine")

    server = await serve(script)
    pool = pool_for(server.url)
    assert await fetch(pool) == (200, b"fine")
    assert await fetch(pool, "POST", b"{}") == (200, b"fine")
    assert server.connections == 2
    pool.close()


async def test_connection_close_and_extra_bytes_stop_reuse(serve) -> None:
    answers = [ok(b"a", b"connection: close\r\n"), [*ok(b"b"), b"junk"], ok(b"c")]
    server = await serve(lambda n, req: answers[n])
    pool = pool_for(server.url)
    assert [await fetch(pool) for _ in range(3)] == [(200, b"a"), (200, b"b"), (200, b"c")]
    assert server.connections == 3
    pool.close()


async def test_a_chunked_stream_arrives_piece_by_piece(serve) -> None:
    events = [b"data: %d\n\n" % i for i in range(5)]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def script(n: int, req: bytes) -> list[bytes | float | None]:
        pieces: list[bytes | float | None] = [head]
        for event in events:
            pieces += [b"%x\r\n%b\r\n" % (len(event), event), 0.02]
        return [*pieces, b"0\r\n\r\n"]

    server = await serve(script)
    pool = pool_for(server.url)
    conn = await pool.request("POST", "/v1/chat/completions", [], b"{}")
    seen: list[bytes] = []
    conn.start_body(seen.append)
    while await conn.wait() is not Wake.ENDED:
        pass
    assert seen == events  # one call per chunk as it came, not one at the end
    pool.release(conn)
    assert await fetch(pool) == (200, b"".join(events))  # on the pooled connection
    assert server.connections == 1
    pool.close()


async def test_a_body_cut_short_is_an_error(serve) -> None:
    server = await serve(lambda n, req: [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", None])
    pool = pool_for(server.url)
    with pytest.raises(UpstreamBroken, match="closed before the end"):
        await fetch(pool)
    pool.close()


async def test_a_body_delimited_by_the_close_is_complete(serve) -> None:
    server = await serve(lambda n, req: [b"HTTP/1.1 200 OK\r\n\r\nall of it", None])
    pool = pool_for(server.url)
    assert await fetch(pool) == (200, b"all of it")
    pool.close()


async def test_silence_beyond_the_read_timeout_is_a_timeout(serve) -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n"
    server = await serve(lambda n, req: [head, 5.0])
    pool = pool_for(server.url, read_timeout=0.3)
    with pytest.raises(UpstreamTimeout):
        await fetch(pool)
    silent = await serve(lambda n, req: [5.0])
    with pytest.raises(UpstreamTimeout):
        await fetch(pool_for(silent.url, read_timeout=0.3))
    pool.close()


async def test_a_slow_but_steady_stream_never_times_out(serve) -> None:
    # Each gap is below the read timeout, the whole answer far above it.
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    steady: list[bytes | float | None] = [head]
    for _ in range(8):
        steady += [0.15, b"1\r\nx\r\n"]
    server = await serve(lambda n, req: [*steady, b"0\r\n\r\n"])
    assert await fetch(pool_for(server.url, read_timeout=0.4)) == (200, b"x" * 8)


async def test_nobody_listening_is_unreachable() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(UpstreamUnreachable):
        await fetch(pool_for(f"http://127.0.0.1:{port}"))


async def test_interim_responses_are_skipped(serve) -> None:
    server = await serve(lambda n, req: [b"HTTP/1.1 100 Continue\r\n\r\n", *ok(b"done")])
    assert await fetch(pool_for(server.url)) == (200, b"done")


# --- the tenant-isolation invariant and the state machine -------------------------------


async def test_an_answer_never_read_by_its_exchange_is_never_handed_to_the_next(serve) -> None:
    """The wave-1 leak: the whole answer arrives with its head, the client is gone before
    the relay starts, and the connection used to go back to the pool with it buffered."""
    server = await serve(lambda n, req: ok(b"answer-%d" % n))
    pool = pool_for(server.url)
    conn = await pool.request("GET", "/v1/models", [], b"")
    await asyncio.sleep(0.05)  # the body is complete and buffered, nobody took it
    assert conn.head is not None
    pool.release(conn)  # as the proxy does when the client left before start_body
    assert conn.closed
    assert await fetch(pool) == (200, b"answer-1")  # its own answer, on a new connection
    assert server.connections == 2
    pool.close()


async def test_a_half_read_answer_closes_the_connection(serve) -> None:
    body = b"x" * 200_000
    server = await serve(lambda n, req: ok(body))
    pool = pool_for(server.url)
    conn = await pool.request("GET", "/v1/models", [], b"")
    conn.start_body(lambda data: None)
    pool.release(conn)  # released mid-body (the client vanished)
    assert conn.closed
    assert await fetch(pool) == (200, body)
    assert server.connections == 2
    pool.close()


async def test_a_sink_that_fails_ends_the_exchange_and_the_connection(serve) -> None:
    server = await serve(lambda n, req: ok(b"abc"))
    pool = pool_for(server.url)
    conn = await pool.request("GET", "/v1/models", [], b"")

    def gone(data: bytes) -> None:
        raise ConnectionResetError("client gone")

    conn.start_body(gone)
    with pytest.raises(ConnectionResetError):
        await conn.wait()
    assert not conn.reusable
    pool.release(conn)
    assert conn.closed
    pool.close()


async def test_a_wake_with_nobody_waiting_is_kept_for_the_next_wait(serve) -> None:
    server = await serve(
        lambda n, req: [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 5.0]
    )
    pool = pool_for(server.url)
    conn = await pool.request("POST", "/v1/chat/completions", [], b"{}")
    conn.start_body(lambda data: None)
    conn.wake()  # before anyone waits: the nudge must not be lost
    assert await asyncio.wait_for(conn.wait(), 1.0) is Wake.NUDGED
    pool.release(conn)
    pool.close()


async def test_illegal_transitions_raise(serve) -> None:
    server = await serve(lambda n, req: ok(b"abc"))
    pool = pool_for(server.url)
    conn = await pool.request("GET", "/v1/models", [], b"")
    conn.start_body(lambda data: None)
    with pytest.raises(ProtocolStateError):
        conn.start_body(lambda data: None)
    assert await conn.wait() is Wake.ENDED
    with pytest.raises(ProtocolStateError):
        await conn.send("GET", b"GET / HTTP/1.1\r\n\r\n", b"", 1.0)  # a second exchange
    pool.release(conn)
    conn.assert_idle()
    pool.close()


async def test_waiting_for_a_free_connection_times_out(serve) -> None:
    server = await serve(
        lambda n, req: [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 5.0]
    )
    pool = pool_for(server.url, max_connections=1, queue_timeout=0.2)
    held = await pool.request("POST", "/v1/chat/completions", [], b"{}")
    with pytest.raises(UpstreamBusy):
        await pool.request("POST", "/v1/chat/completions", [], b"{}")
    pool.release(held)
    pool.close()


async def test_exchanges_leave_nothing_for_the_cyclic_gc(serve) -> None:
    # Each response's parser and reader used to refer to each other: one cycle per answer,
    # freed only by the GC, whose pauses stall every stream on the loop (bench/README.md).
    chunked = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        0.001,
        b"0\r\n\r\n",
    ]
    scripts = {
        0: chunked,
        1: ok(b"plain"),
        2: [*ok(b"closing"), None],
        3: [*chunked[:2], None],
        4: [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],  # the answer to HEAD
        5: [*ok(b"x", b""), b"HTTP/1.1 200 OK\r\n"],  # bytes after the end
    }
    server = await serve(lambda n, req: scripts[n % 6])
    pool = pool_for(server.url)
    our_garbage()
    gc.disable()
    try:
        outcomes = []
        for _ in range(5):
            for n in range(6):
                try:
                    outcomes.append(await fetch(pool, "HEAD" if n == 4 else "GET"))
                except UpstreamBroken:
                    outcomes.append("broken")
        assert outcomes.count("broken") == 5  # the cut-short answers did fail
        assert our_garbage() == []
    finally:
        gc.enable()
        pool.close()


async def test_a_sink_that_fails_mid_buffer_stops_the_parsing_there(serve) -> None:
    # The client leaves just as the last chunks and the end arrive in one segment: the
    # sink fails on the first, the connection closes (dropping the reader's parser), and
    # llhttp must not go on calling back into a closed connection (an exception escaped
    # data_received: the loop logged a fatal protocol error).
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    server = await serve(lambda n, req: [head, 0.05, b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"])
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    pool = pool_for(server.url)
    conn = await pool.request("GET", "/v1/models", [], b"")
    calls: list[bytes] = []

    def gone(data: bytes) -> None:
        calls.append(data)
        raise ClientGone("client gone")

    conn.start_body(gone)
    with pytest.raises(ClientGone):
        await conn.wait()
    await asyncio.sleep(0.05)
    assert calls == [b"abc"]  # nothing handed to the sink after it failed
    assert escaped == []
    assert not conn.reusable and conn.closed
    pool.release(conn)
    pool.close()
    loop.set_exception_handler(None)


async def test_answers_stopped_early_leave_nothing_for_the_cyclic_gc(serve) -> None:
    # A response to HEAD, and one followed by bytes (a second response, or junk), stop
    # llhttp from a callback: the stop's traceback must not keep the reader's frames.
    answers = [
        ok(b"abc"),  # to HEAD: ends with its head
        [ok(b"abc")[0] + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"],
        [ok(b"abc")[0] + b"HTTP/1.1 200 OK\r\n"],
        [ok(b"abc")[0] + b"\x00junk"],
    ]
    server = await serve(lambda n, req: answers[n % 4])
    pool = pool_for(server.url)
    our_garbage()
    gc.disable()
    try:
        outcomes = [await fetch(pool, method="HEAD" if n % 4 == 0 else "GET") for n in range(8)]
        assert outcomes == [(200, b""), (200, b"abc"), (200, b"abc"), (200, b"abc")] * 2
        assert server.connections == 8  # none of them was reused
        assert our_garbage() == []
    finally:
        gc.enable()
        pool.close()


async def test_the_head_hook_gets_the_bytes_that_came_with_the_head_in_the_same_call(
    serve,
) -> None:
    # The head and two chunks in one write (one read here), the end 0.3 s later. The hook
    # starts the body from inside the read that parsed the head: both chunks reach the
    # sink before the loop runs anything else (the marker it schedules), and before the
    # task that awaits the request resumes.
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    first = head + b"3\r\nabc\r\n3\r\ndef\r\n"
    server = await serve(lambda n, req: [first, 0.3, b"0\r\n\r\n"])
    loop = asyncio.get_running_loop()
    pool = pool_for(server.url)
    seen: list[bytes] = []
    when_the_loop_turned: list[list[bytes]] = []
    hooked: list[Connection] = []

    def hook(conn: Connection) -> None:
        hooked.append(conn)
        assert conn.head is not None and conn.head.status == 200
        conn.start_body(seen.append)
        loop.call_soon(lambda: when_the_loop_turned.append(list(seen)))

    for _ in range(2):  # a new connection, then the pooled one
        for kept in (seen, when_the_loop_turned, hooked):
            kept.clear()
        conn = await pool.request("GET", "/v1/models", [], b"", on_head=hook)
        assert hooked == [conn]
        assert when_the_loop_turned == [[b"abc", b"def"]]
        while await conn.wait() is not Wake.ENDED:
            pass
        pool.release(conn)
    assert server.connections == 1
    pool.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_head_hook_that_raises_fails_its_exchange_only(serve, method) -> None:
    server = await serve(lambda n, req: ok(b"abc"))
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    pool = pool_for(server.url)

    def hook(conn: Connection) -> None:
        raise RuntimeError("a defect in the hook")

    conn = await pool.request(method, "/v1/models", [], b"", on_head=hook)
    with pytest.raises(RuntimeError, match="a defect in the hook"):
        await conn.wait()
    await asyncio.sleep(0.05)
    assert escaped == []  # nothing escaped data_received (llhttp stopped there)
    assert not conn.reusable and conn.closed
    pool.release(conn)
    assert await fetch(pool, method) == (200, b"" if method == "HEAD" else b"abc")
    pool.close()
    loop.set_exception_handler(None)
