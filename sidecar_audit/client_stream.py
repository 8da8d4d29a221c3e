"""The client's side of one relayed response: every direct use of aiohttp's server transport.

The proxy writes vLLM's body to the client from inside the upstream
connection's `data_received`, synchronously, so it cannot go through
`StreamResponse.write` (a coroutine). This module is the one place that
reaches below aiohttp's response API, and it relies on exactly these
behaviours of aiohttp (pinned in pyproject.toml; each has a test in
tests/sidecar/test_client_stream.py):

1. `StreamResponse.prepare()` returns the payload writer and only buffers the
   head, without ever suspending (the app has no `on_response_prepare` handler
   and compresses nothing), so `open()` runs it to completion in the caller's
   own call; `AbstractStreamWriter.send_headers()` writes the head out at once.
   The proxy opens the stream inside the upstream connection's `data_received`
   that parsed vLLM's head: the head and the first events reach the client with
   no turn of the event loop in between.
2. After the head, bytes given to `transport.write` reach the client as the
   body; when the writer chose chunked coding (`writer.chunked`) each piece must be
   framed by us as `<hex size>CRLF data CRLF`, and `write_eof()` still writes
   the last chunk.
3. A response whose `_send_headers_immediately` is false (aiohttp's own
   `web.Response` sets it so) keeps the head buffered through `prepare()`;
   `write_eof()` then sends it: how a held head (below) waits for the record.
4. The request handler is an asyncio protocol whose `writing_paused` is true
   between the transport's `pause_writing()` and `resume_writing()`, and
   `writer.drain()` waits for the latter (an event, not a poll). A stall is
   judged by progress: the transport's buffer not shrinking for `stall_s`.

States, in order: OPEN (head sent, writing), or HELD (an answer with no body by
definition — to HEAD, 204, 304, `Content-Length: 0` — whose head is the whole
answer: aiohttp keeps it buffered and `write_eof()` sends it, so that it too
leaves only after the record) → ENDED (write_eof) or GONE (the client left or
stalled). Writing in any state but OPEN raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import socket
import struct
import termios
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .upstream import ClientGone, ProtocolStateError

_T = TypeVar("_T")


def _run_to_completion(coro: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never suspends, without a task; a suspension
    (something aiohttp's prepare() awaits that is not ready) is a defect here."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise ProtocolStateError("client stream: prepare() suspended")


class _State(enum.Enum):
    HELD = "held"
    OPEN = "open"
    ENDED = "ended"
    GONE = "gone"


class ClientStream:
    """Writes a response body straight to the client's transport."""

    __slots__ = ("_chunked", "_protocol", "_response", "_state", "_transport", "_writer")

    def __init__(
        self, response: web.StreamResponse, writer: AbstractStreamWriter, *, hold_head: bool
    ) -> None:
        transport = writer.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client closed the connection")
        self._response = response
        self._writer = writer
        self._transport: asyncio.WriteTransport = transport
        self._protocol = writer.protocol  # type: ignore[attr-defined]
        self._chunked = bool(writer.chunked)  # type: ignore[attr-defined]
        if hold_head:
            self._state = _State.HELD
        else:
            self._state = _State.OPEN
            writer.send_headers()

    @classmethod
    def open(
        cls, response: web.StreamResponse, request: web.Request, *, hold_head: bool = False
    ) -> ClientStream:
        """Prepare `response` and send its head, now (behaviour 1); synchronous. With
        `hold_head` (an answer without a body) the head waits for `end()` instead."""
        if hold_head:
            response._send_headers_immediately = False  # behaviour 3
        writer = _run_to_completion(response.prepare(request))
        if writer is None:
            raise ClientGone("the client closed the connection")
        return cls(response, writer, hold_head=hold_head)

    def check(self) -> None:
        """Raise ClientGone if the client's connection is already closing."""
        if self._transport.is_closing():
            self._state = _State.GONE
            raise ClientGone("the client closed the connection")

    def write(self, data: bytes) -> None:
        """Send `data` now (synchronous); raises ClientGone if the client has left."""
        if self._state is not _State.OPEN:
            raise ProtocolStateError(f"client stream: write when {self._state.value}")
        self.check()
        transport = self._transport
        if self._chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)

    @property
    def congested(self) -> bool:
        """The transport asked us to stop writing (its buffer is above its high mark)."""
        return self._protocol.writing_paused

    async def drain(self, stall_s: float) -> None:
        """Wait until the transport takes writes again; a client that takes nothing for
        `stall_s` is gone. Progress is what counts, not speed: a slow reader whose
        kernel buffers hold megabytes may need longer than `stall_s` to drain them,
        and is cut only if our buffer did not shrink at all in `stall_s`."""
        transport = self._transport
        # aiohttp leaves `writing_paused` set when the connection is lost and its drain()
        # then returns at once: a closed transport ends the wait (else this loop would
        # never suspend), and is checked before the ioctl (a closed socket's fd is -1),
        # which runs only when there is something to wait for.
        # aiohttp's drain() awaits the protocol's one waiter future itself: a timeout that
        # cancelled it would leave it cancelled, and every later drain() would raise
        # CancelledError at once. One drain task is waited on across stall periods instead
        # (asyncio.wait does not cancel it), and cancelled only when we stop waiting.
        before = self._unsent() if self.congested and not transport.is_closing() else 0
        drained: asyncio.Future[None] | None = None
        try:
            while self.congested and not transport.is_closing():
                if drained is None:
                    drained = asyncio.ensure_future(self._writer.drain())
                await asyncio.wait((drained,), timeout=stall_s)
                if drained.done():
                    done, drained = drained, None
                    done.result()  # ConnectionError: the client left
                    continue
                now = self._unsent()
                if now >= before:
                    self._cut()
                    raise ClientGone(f"the client read nothing for {stall_s:g} s")
                before = now
        except ConnectionError:
            self._state = _State.GONE
            raise ClientGone("the client closed the connection") from None
        finally:
            if drained is not None:
                if drained.done() and not drained.cancelled():
                    drained.exception()  # ended as we left (cancelled): retrieved, not logged
                drained.cancel()
                drained = None
        self.check()

    def _unsent(self) -> int:
        """Bytes written but not yet taken by the client: our buffer plus the kernel's
        send queue (TIOCOUTQ, Linux), so that a reader draining megabytes of kernel
        buffer shows progress before our own buffer moves."""
        queued = self._transport.get_write_buffer_size()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                queued += struct.unpack("i", raw)[0]
            except (OSError, ValueError):  # not TCP, not Linux, or closed (fd -1)
                pass
        return queued

    async def end(self, last: bytes, stall_s: float) -> None:
        """Send the last bytes, wait for the client to take them, end the body (write_eof)."""
        if last:
            self.write(last)
        await self.drain(stall_s)
        if self._state is not _State.OPEN and self._state is not _State.HELD:
            raise ProtocolStateError(f"client stream: end when {self._state.value}")
        self._state = _State.ENDED
        try:
            async with asyncio.timeout(stall_s):  # the terminator only: our buffer is drained
                await self._response.write_eof()
        except TimeoutError:
            self._cut()
            raise ClientGone(f"the client read nothing for {stall_s:g} s") from None
        except ConnectionError:
            raise ClientGone("the client closed the connection") from None

    def abort(self) -> None:
        """End the client's connection without a terminating chunk: the body is incomplete."""
        self._state = _State.GONE
        self._response.force_close()
        self._transport.close()

    def _cut(self) -> None:
        """A stalled client: reset the connection, dropping what it did not take. A
        graceful close would wait to flush our buffer and the kernel's send queue
        (megabytes) to a client that reads nothing, keeping the socket and its buffers
        for as long as the client keeps its end open; `abort()` alone frees ours but
        leaves the kernel sending (SO_LINGER 0 makes the close a reset)."""
        self._state = _State.GONE
        self._response.force_close()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):  # not TCP, or already closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()
