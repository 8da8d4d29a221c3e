"""The upstream client: HTTP/1.1 framing as pure functions, and the pool against real sockets.

The pool tests run a scripted HTTP server on loopback (a plain asyncio server
that answers each request with bytes the test chooses, and counts connections),
because the cases that matter are the ones a well-behaved server rarely shows:
a keep-alive connection closed just before reuse, a body cut short, silence,
bytes after the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar_audit.upstream import (
    ChunkedDecoder,
    UpstreamBroken,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
    parse_head,
    request_bytes,
)

# --- framing, pure --------------------------------------------------------------------

SSE_BODY = b"b4\r\n" + b"data: " + b"x" * 172 + b"\n\n" + b"\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def decode_split(wire: bytes, cuts: list[int]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = []
    start = 0
    for cut in [*cuts, len(wire)]:
        out.append(decoder.feed(wire[start:cut]))
        start = cut
    return b"".join(out), decoder


def test_chunked_decoding_is_the_same_however_the_bytes_are_split() -> None:
    expected = b"data: " + b"x" * 172 + b"\n\n" + b"data: [DONE]\n\n"
    whole, decoder = decode_split(SSE_BODY, [])
    assert whole == expected and decoder.done and not decoder.trailing
    for a in range(len(SSE_BODY)):
        for b in (a, a + 1, a + 3):
            body, decoder = decode_split(SSE_BODY, sorted({a, min(b, len(SSE_BODY))}))
            assert body == expected, (a, b)
            assert decoder.done and not decoder.trailing


def test_chunk_extensions_and_trailers_are_skipped() -> None:
    body, decoder = decode_split(b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", [])
    assert body == b"hello" and decoder.done


def test_bytes_after_the_last_chunk_are_flagged() -> None:
    _, decoder = decode_split(b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK", [])
    assert decoder.done and decoder.trailing


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\nhi\r\n", b"0x2\r\nhi\r\n", b"2\r\nhiXX", b"-1\r\n", b"1" * 5000],
)
def test_bad_chunked_framing_is_refused(wire: bytes) -> None:
    with pytest.raises(UpstreamBroken):
        ChunkedDecoder().feed(wire)


def test_head_framing_follows_rfc_9112() -> None:
    head, framing, size = parse_head(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked", "POST"
    )
    assert (head.status, head.reason, head.keep_alive, head.content_length) == (
        200,
        "OK",
        True,
        None,
    )
    assert head.header("Content-Type") == "text/event-stream"
    chunked = framing
    _, framing, size = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12", "GET")
    assert size == 12 and framing != chunked
    head, _, _ = parse_head(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1", "GET")
    assert not head.keep_alive
    head, _, _ = parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 1", "GET")
    assert not head.keep_alive
    head, _, _ = parse_head(b"HTTP/1.1 200 OK", "GET")  # delimited by the close
    assert not head.keep_alive
    no_body = parse_head(b"HTTP/1.1 204 No Content", "DELETE")[1]
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9", "HEAD")[1] == no_body
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0", "GET")[1] == no_body


@pytest.mark.parametrize(
    "head",
    [
        b"SSH-2.0-OpenSSH",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip",
    ],
)
def test_heads_that_are_not_http_we_speak_are_refused(head: bytes) -> None:
    with pytest.raises(UpstreamBroken):
        parse_head(head, "GET")


def test_request_bytes_carry_host_length_and_headers_as_given() -> None:
    wire = request_bytes("POST", "/v1/chat/completions?x=1", "127.0.0.1:8001", [("A", "b")], b"{}")
    assert wire == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nA: b\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert b"Content-Length: 0" in request_bytes("POST", "/", "h", [], b"")
    assert b"Content-Length" not in request_bytes("GET", "/", "h", [], b"")


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

    async def start(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
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
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
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
    settings = {"connect_timeout": 2.0, "read_timeout": 5.0, "keepalive_s": 4.0}
    settings.update(overrides)
    return UpstreamPool(url, max_connections=8, **settings)  # type: ignore[arg-type]


async def fetch(pool: UpstreamPool, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    """One exchange through the pool, the body gathered by the sink."""
    conn = await pool.request(method, "/v1/models", [("Accept", "*/*")], body)
    pieces: list[bytes] = []
    try:
        assert conn.head is not None
        conn.start_body(pieces.append)
        while not await conn.wait():
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
    while not await conn.wait():
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
