"""A raw HTTP/1.1 client for hostile tests: full control of when bytes go and the socket dies.

`read_reply(reader)` reads one response off a keep-alive connection with llhttp
(httptools), returning the status, the de-chunked body exactly as received and
whether the connection may carry another request. `read_replies(reader, n)` and
`replies_of(data)` read several, interim (1xx) answers included, in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httptools

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode("latin-1").lower() == name:
                return value.decode("latin-1")
        return None


class _Collector:
    def __init__(self) -> None:
        self.reply = Reply()
        self.parts: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.reply.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    async with asyncio.timeout(30):
        while not collector.done:
            data = await reader.read(65536)
            if not data:
                break
            parser.feed_data(data)
    reply = collector.reply
    if collector.done:
        reply.status = parser.get_status_code()
        reply.keep_alive = parser.should_keep_alive()
    else:
        reply.keep_alive = False
    reply.body = b"".join(collector.parts)
    return reply


class _Replies:
    """llhttp callbacks: every response on one connection, in order (1xx ones included)."""

    def __init__(self) -> None:
        self.done: list[Reply] = []
        self.current = Reply()
        self.body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.current, self.body = Reply(), []

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.current.body = b"".join(self.body)
        self.done.append(self.current)


def replies_of(data: bytes) -> list[Reply]:
    """Every complete response in `data`; fails on bytes that are not well-framed answers."""
    replies = _Replies()
    replies.parser.feed_data(data)
    return replies.done


async def read_replies(reader: asyncio.StreamReader, count: int) -> list[Reply]:
    """`count` responses off one connection (fails if it ends before; the caller bounds
    the wait)."""
    replies = _Replies()
    while len(replies.done) < count:
        data = await reader.read(65536)
        assert data, f"the connection ended after {len(replies.done)} of {count} answers"
        replies.parser.feed_data(data)
    return replies.done[:count]
