"""Writing responses so that the journal knows exactly how each exchange ended.

Invariants: a handler returns a response that is already written (JSON bodies) or
fully streamed (SSE), so the journal middleware can record `completed` when the
handler returns; a stream counts as `completed` as soon as its last event is
written, before the chunked terminator, so a client that hangs up right after
`[DONE]` is not counted as an abort. A write to a vanished client is recorded as
`aborted` here for streams; for whole responses, and for a handler cancelled by the
disconnect, the journal middleware records it.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable

from aiohttp import web

from vllm_standin.errors import ApiError
from vllm_standin.journal import ABORTED, COMPLETED, Entry, Journal

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


async def send_bytes(
    request: web.Request,
    status: int,
    body: bytes,
    content_type: str | None = JSON,
    *,
    compress: bool = False,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Write a whole response now; `content_type=None` sends no content type (vLLM /health)."""
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    if compress:
        # mtime 0: the same answer compresses to the same bytes, so tests can compare a
        # direct and a proxied answer byte for byte whatever second each falls in.
        body = gzip.compress(body, mtime=0)
        all_headers["Content-Encoding"] = "gzip"
    response = web.Response(status=status, body=body, headers=all_headers)
    await response.prepare(request)  # ConnectionResetError: the middleware records the abort
    await response.write_eof()
    return response


async def send_error(request: web.Request, error: ApiError) -> web.Response:
    return await send_bytes(request, error.status, error.body)


class StreamCut(ConnectionError):
    """The server drops the connection mid-stream (an exception escaped vLLM's generator)."""


HIGH_WATER = 64 * 1024  # bytes queued in the transport before waiting for the client


class SseOut:
    """The open event stream of one exchange: writes events and counts them.

    Writes are synchronous, so a timer callback can emit an event without waking a
    task: each event is framed as one HTTP chunk and handed to the transport in one
    write (what aiohttp's `write` does, minus its per-call bookkeeping). When a slow
    client lets the buffer grow past `HIGH_WATER`, `congested()` says so and the
    producer awaits `drain()` before the next event.
    """

    __slots__ = ("_entry", "_transport", "_writer")

    def __init__(self, request: web.Request, entry: Entry) -> None:
        self._transport = request.transport
        self._writer = request.writer
        self._entry = entry

    def _send(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))
        self._entry.response_bytes += len(payload)

    def data(self, event: bytes) -> None:
        """One `data:` event (the caller encodes it, trailing blank line included)."""
        self._send(event)
        self._entry.events_sent += 1

    def comment(self, line: bytes) -> None:
        self._send(line)
        self._entry.comments_sent += 1

    def congested(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > HIGH_WATER

    async def drain(self) -> None:
        await self._writer.drain()


Producer = Callable[[SseOut], Awaitable[None]]


async def run_stream(
    request: web.Request, journal: Journal, entry: Entry, produce: Producer
) -> web.StreamResponse:
    """Send the 200 and SSE headers at once (as Starlette does), then the produced events."""
    response = web.StreamResponse(status=200, headers={"Content-Type": SSE})
    journal.mark_stream(entry)
    entry.status = 200
    try:
        await response.prepare(request)
        await produce(SseOut(request, entry))
        journal.close(entry, COMPLETED)
        await response.write_eof()
    except StreamCut:
        # What uvicorn does when the app raises after the response started: close the
        # connection, no chunked terminator. The server did all it meant to.
        journal.close(entry, COMPLETED)
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:
        journal.close(entry, ABORTED)
    return response
