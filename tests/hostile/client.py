"""A raw HTTP/1.1 client for hostile tests: full control of when bytes go and the socket dies.

`read_reply(reader)` reads one response off a keep-alive connection with llhttp
(httptools), returning the status, the de-chunked body exactly as received and
whether the connection may carry another request.
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
