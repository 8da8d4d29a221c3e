"""Upgrade requests, Expect handling and identity characters against the real sidecar process
(loopback; red team rt9).

A request asking to upgrade is answered once, in HTTP/1.1, and its connection closed: nothing
pipelined after it is answered, unaudited or otherwise, and nothing upgrade-related reaches
vLLM. `Expect: 100-continue` is met with at most one interim answer, before one final answer
with its record, also when the client is already gone. Identity values holding controls or
bidirectional embeddings, overrides or isolates are refused (400, or `unknown` on a refused
path); marks and joiners are kept.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import uuid
from typing import Any

import httptools
import pytest

from tests.hostile.client import MODEL, Reply

pytestmark = pytest.mark.timeout(180)

CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
).encode()
STREAM = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
UPGRADES = {
    "websocket": b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    "websocket-without-connection": b"Upgrade: websocket\r\n",
    "h2c": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "tcp": b"Connection: upgrade\r\nUpgrade: tcp\r\n",
    "empty": b"Connection: upgrade\r\nUpgrade:\r\n",
    "repeated": b"Connection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n",
}
# Names that say "upgrade" on the way in; none may reach vLLM.
UPGRADE_FIELDS = {"upgrade", "connection", "http2-settings"}
LIMIT = 4096  # MAX_REQUEST_BODY_BYTES of the sidecar under test


def rid() -> str:
    return f"rt9-{uuid.uuid4().hex[:16]}"


def identity(user: str = "u") -> bytes:
    return f"x-llm-source: s\r\nx-llm-user: {user}\r\nx-llm-request-type: chat\r\n".encode()


def request(
    method: bytes,
    target: bytes,
    request_id: str,
    headers: bytes = b"",
    body: bytes | None = None,
    *,
    chunked: bool = False,
    version: bytes = b"1.1",
) -> bytes:
    """One request, byte for byte; a body goes with Content-Length, or chunked in one chunk."""
    head = b"%s %s HTTP/%s\r\nHost: x\r\nx-request-id: %s\r\n" % (
        method,
        target,
        version,
        request_id.encode(),
    )
    head += headers
    if body is not None and chunked:
        head += b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


class _Replies:
    """httptools callbacks: every response on the connection, in order (1xx ones included)."""

    def __init__(self, *, head: bool = False) -> None:
        self.done: list[Reply] = []
        self.current = Reply()
        self.body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)
        self.head = head

    def on_message_begin(self) -> None:
        self.current, self.body = Reply(), []

    def on_headers_complete(self) -> bool:
        self.current.status = self.parser.get_status_code()
        return self.head and self.current.status >= 200  # an answer to HEAD has no body

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.current.body = b"".join(self.body)
        self.done.append(self.current)


def replies_of(data: bytes, *, head: bool = False) -> list[Reply]:
    """Every complete response in `data`; fails on bytes that are not well-framed answers."""
    replies = _Replies(head=head)
    replies.parser.feed_data(data)
    return replies.done


async def until_closed(url: str, data: bytes, *, then: bytes = b"") -> bytes:
    """Write `data` on one connection, and `then` once the first answer's head is in;
    everything the sidecar sends until it closes the connection (fails if it never does)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            while chunk := await reader.read(65536):
                received += chunk
                if then and b"\r\n\r\n" in received:
                    writer.write(then)
                    then = b""
    except ConnectionResetError:
        pass  # bytes we sent after the answer and the sidecar never read: a reset, not a hang
    finally:
        writer.close()
    return received


async def answers(url: str, data: bytes, count: int) -> list[Reply]:
    """Write `data` on one connection and read `count` answers (1xx ones included)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    replies = _Replies()
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            while len(replies.done) < count:
                chunk = await reader.read(65536)
                assert chunk, f"the connection ended after {len(replies.done)} of {count} answers"
                replies.parser.feed_data(chunk)
    finally:
        writer.close()
    return replies.done


def records(sidecar: Any, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The record of each request id (exactly one each), waiting for all of them."""
    found = sidecar.wait_for_records(request_ids).records
    by_id: dict[str, dict[str, Any]] = {}
    for record in found:
        assert record["requestId"] not in by_id, f"two records for {record['requestId']}"
        by_id[record["requestId"]] = record
    return by_id


def seen_ids(standin: Any) -> set[str]:
    return {
        value
        for entry in standin.requests()
        for key, value in entry["header_list"]
        if key.lower() == "x-request-id"
    }


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url, MAX_REQUEST_BODY_BYTES=str(LIMIT))


# --- Expect: 100-continue from a client that is already gone --------------------------------


def _sent_then_reset(url: str, data: bytes) -> None:
    """Send `data`, then reset the connection (SO_LINGER 0): the client is gone at once."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(data)


@pytest.mark.parametrize(
    ("target", "outcomes"),
    [
        (b"/v1/chat/completions", {"client_disconnected", "completed"}),
        (b"/sleep", {"rejected"}),
    ],
)
async def test_a_request_expecting_100_continue_whose_client_left_is_still_recorded(
    standin_session, sidecar, target: bytes, outcomes: set[str]
) -> None:
    """The sidecar's expect handler wrote the 100 to a connection the client had already
    reset: aiohttp's writer raised, the request's handler never ran, and the request left
    no record, only an aiohttp error in the log (the same request without the expectation
    is recorded as `client_disconnected`). An admin-route probe sent so was untraceable.
    A client that is gone needs no 100: the request goes on to its handler and record."""
    sent = []
    for _ in range(10):
        request_id = rid()
        sent.append(request_id)
        headers = identity("eve") + b"content-type: application/json\r\nExpect: 100-continue\r\n"
        _sent_then_reset(sidecar.url, request(b"POST", target, request_id, headers, CHAT))
    found = records(sidecar, sent)
    for request_id in sent:
        record = found[request_id]
        assert record["outcome"] in outcomes, record
        assert (record["userId"], record["path"]) == ("eve", target.decode())
    assert "Cannot write to closing transport" not in sidecar.proc.log()


# --- Upgrade ----------------------------------------------------------------------------------


async def test_an_upgrade_request_to_health_closes_the_connection(standin_session, sidecar) -> None:
    """`/health` is answered by the sidecar itself, not the proxy, and kept the connection
    open after a request asking to upgrade (h2c): aiohttp drops the bytes read with such a
    request, so a request pipelined behind it was never answered, and the client waited
    for the keep-alive timeout. The answer now closes the connection, as the proxy's do."""
    standin_session.reset()
    following = rid()
    data = request(b"GET", b"/health", rid(), UPGRADES["h2c"]) + request(
        b"GET", b"/v1/models", following, identity()
    )
    received = await until_closed(sidecar.url, data)
    [reply] = replies_of(received)
    assert reply.status == 200 and reply.header("connection") == "close", received[:300]
    assert following not in seen_ids(standin_session)
