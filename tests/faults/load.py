"""Client load for the fault tests: concurrent OpenAI-style calls, each ending in an `Answer`.

One job: send requests the way real clients do (chat, streamed or not, with the
audit headers and a request id we choose) and tell, for each, whether the
client got a complete answer. A streamed answer counts only when it reached
`data: [DONE]`; a connection that broke first is "no answer". Only answered
requests must have a record in S3; the others may or may not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.sidecar_fixture import AUDIT_HEADERS

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
CHAT_PATH = "/v1/chat/completions"


def chat_body(text: str, *, stream: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Answer:
    request_id: str
    status: int | None  # None: the client got no complete answer
    body: bytes
    stream: bool
    error: str | None = None
    latency_ms: float | None = None  # client side, start to last byte; printed, never asserted

    @property
    def answered(self) -> bool:
        return self.status is not None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(
    session: aiohttp.ClientSession,
    base_url: str,
    request_id: str,
    *,
    stream: bool = False,
    body: Mapping[str, Any] | bytes | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = CHAT_PATH,
) -> Answer:
    """One request; never raises for network trouble (that is an unanswered `Answer`)."""
    payload = body if body is not None else chat_body(f"fault test {request_id}", stream=stream)
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    sent = {
        "content-type": "application/json",
        **AUDIT_HEADERS,
        "x-request-id": request_id,
        **(headers or {}),
    }
    started = time.monotonic()
    try:
        async with session.post(f"{base_url}{path}", data=data, headers=sent) as response:
            received = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Answer(request_id, None, b"", stream, repr(exc))
    latency_ms = (time.monotonic() - started) * 1000.0
    if stream and status == 200 and not received.rstrip().endswith(b"data: [DONE]"):
        return Answer(request_id, None, received, stream, "stream ended before [DONE]", latency_ms)
    return Answer(request_id, status, received, stream, None, latency_ms)


@dataclass
class Load:
    """`count` requests, at most `concurrency` at once; every other one streamed.

    `answers` grows as requests finish, so a test can act (kill, cut) mid-load;
    after `stop` is set no new request starts.
    """

    base_url: str
    count: int
    concurrency: int
    prefix: str
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_every: int = 2
    answers: list[Answer] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every answer

    async def run(self) -> list[Answer]:
        gate = asyncio.Semaphore(self.concurrency)
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(n: int) -> None:
                async with gate:
                    if self.stop.is_set():
                        return
                    stream = self.stream_every > 0 and n % self.stream_every == 0
                    answer = await call(
                        session,
                        self.base_url,
                        new_id(self.prefix),
                        stream=stream,
                        headers=self.headers,
                    )
                    self.answers.append(answer)
                    self.progress.set()

            await asyncio.gather(*(one(n) for n in range(self.count)))
        return self.answers

    def answered(self) -> list[Answer]:
        return [a for a in self.answers if a.answered]

    async def wait_answered(self, count: int) -> None:
        """Return once `count` requests were answered (fail after 30 s)."""
        async with asyncio.timeout(30):
            while len(self.answered()) < count:
                self.progress.clear()
                await self.progress.wait()


async def run_load(
    base_url: str, count: int, concurrency: int, prefix: str, **options: Any
) -> Load:
    load = Load(base_url, count, concurrency, prefix, **options)
    await load.run()
    return load
