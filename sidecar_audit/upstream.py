"""The connection to vLLM: an HTTP/1.1 client that pushes each response chunk to a callback.

Why not aiohttp's client here: its response body goes through a StreamReader,
so every upstream chunk (one SSE event = one token) costs a future, a task
wake-up and a read coroutine before the proxy can forward it. Here the event
loop's `data_received` parses the framing (llhttp, see http_response.py) and
hands the payload straight to the proxy's sink, which writes it to the client
in the same call. The health probe still uses aiohttp's client.

Scope: what vLLM's server (uvicorn/h11) speaks — HTTP/1.1, a body framed by
Content-Length, chunked coding or the end of the connection; 1xx skipped; no
upgrades, no pipelining.

A `Connection` is an explicit state machine (h11's habit); an illegal
transition raises `ProtocolStateError`:

    IDLE ──send──► AWAIT_HEAD ──head──► BODY ──end──► DONE ──reset──► IDLE
                        │                 │                  (pool; only if reusable)
                        └─────fail────────┴──► FAILED
    any state ──close──► CLOSED (terminal)

The tenant-isolation invariant lives here: **a connection goes back to the pool
only when its response was read to its exact end (llhttp's message complete),
the server allows keep-alive, no byte followed it, and every body byte was
handed to the exchange's sink — nothing buffered.** `UpstreamPool.release`
checks it (`reusable`), `reset` asserts it, and every other path closes the
connection, so no byte of one exchange can ever be read by another.

Other invariants:
- A connection carries one exchange at a time.
- Idle connections are reused most-recent first and never after
  `keepalive_s` (below vLLM's own 5 s idle close).
- Closing a connection mid-response is how an exchange is aborted: vLLM sees
  the disconnect and stops generating.
- Wake-ups are sticky: `wake()` with nobody waiting is kept for the next
  `wait()`, so a nudge can never be lost.
- A request sent on a *reused* connection that the server closed before any
  byte of its answer is retried once on a fresh connection. This cannot run a
  generation twice: uvicorn closes a keep-alive connection that way only when
  it is idle — a request it has read is answered, or dies with the server.
- No total timeout; `read_timeout` bounds each silence (before the head and
  between body bytes), checked lazily so a busy stream costs no timer churn.
  While the proxy has paused reading for a slow client, the silence is ours,
  not vLLM's; the client's own stall limit is the proxy's business.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from .http_response import MalformedResponse, ResponseHead, ResponseReader

__all__ = [
    "ClientGone",
    "Connection",
    "ProtocolStateError",
    "ResponseHead",
    "StaleConnection",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "Wake",
    "request_head",
]


class UpstreamError(Exception):
    """Talking to vLLM failed; `errors.from_upstream_exception` maps the subclasses."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be opened."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or waiting for the next bytes, took longer than allowed."""


class UpstreamBusy(UpstreamError):
    """No connection slot became free in time (every slot is carrying an exchange)."""


class UpstreamBroken(UpstreamError):
    """The connection ended or spoke something that is not HTTP/1.1 mid-exchange."""


class StaleConnection(UpstreamBroken):
    """A reused connection closed before any byte of the answer: safe to retry."""


class ClientGone(Exception):
    """The client's connection closed (or stalled) while its answer was being relayed."""


class ProtocolStateError(RuntimeError):
    """A defect: an operation that the connection's current state does not allow."""


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_HEAD = "await_head"
    BODY = "body"
    DONE = "done"
    FAILED = "failed"
    CLOSED = "closed"


class Wake(enum.Enum):
    ENDED = "ended"  # the response is complete
    NUDGED = "nudged"  # the sink asked the proxy's task to act (e.g. drain a slow client)


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.AWAIT_HEAD, State.CLOSED}),
    State.AWAIT_HEAD: frozenset({State.BODY, State.DONE, State.FAILED, State.CLOSED}),
    State.BODY: frozenset({State.DONE, State.FAILED, State.CLOSED}),
    State.DONE: frozenset({State.IDLE, State.CLOSED}),
    State.FAILED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


def request_head(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]], body_size: int
) -> bytes:
    """The request head as sent on the wire (the body follows it as is). Pure."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body_size or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {body_size}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Connection(asyncio.Protocol):
    """One keep-alive connection to vLLM; see the module docstring for its states."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.state = State.IDLE
        self.reused = False
        self.idle_since = 0.0
        self.head: ResponseHead | None = None
        self._reader: ResponseReader | None = None
        self._got_bytes = False
        self._clean_end = False  # llhttp's end of message, keep-alive, nothing after it
        self._complete = False  # the response ended (stays true once the connection closes)
        self._sink: Callable[[bytes], None] | None = None
        self._on_head: Callable[[Connection], None] | None = None
        self._pending: list[bytes] = []  # body bytes that arrived before the sink
        self._nudged = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- state ----------------------------------------------------------------------------

    def _to(self, new: State) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise ProtocolStateError(f"upstream connection: {self.state.value} -> {new.value}")
        self.state = new

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def reusable(self) -> bool:
        """The tenant-isolation invariant (module docstring): safe to give another exchange."""
        transport = self.transport
        return (
            self.state is State.DONE
            and self._clean_end
            and self._sink is not None
            and not self._pending
            and self._error is None
            and transport is not None
            and not transport.is_closing()
        )

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self._cancel_timer()
        if state is State.BODY and self._reader is not None and self._reader.eof():
            pass  # a close-delimited body is complete (on_end moved us to DONE)
        elif state is State.AWAIT_HEAD and not self._got_bytes and self.reused:
            self._fail(StaleConnection("the pooled connection was closed by the model server"))
        elif state in (State.AWAIT_HEAD, State.BODY):
            detail = "closed before the end of the response"
            self._fail(UpstreamBroken(f"{detail}: {exc}" if exc else detail))
        if self.state is not State.CLOSED:
            self._to(State.CLOSED)

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        state = self.state
        if state is State.BODY or state is State.AWAIT_HEAD:
            self._got_bytes = True
            reader = self._reader
            assert reader is not None
            try:
                reader.feed(data)
            except MalformedResponse as exc:
                self.abort(UpstreamBroken(f"not an HTTP/1.1 response: {exc}"))
        elif state is State.DONE:  # bytes after a complete response: never reuse
            self._clean_end = False
        elif state is State.IDLE:  # bytes nobody asked for: the connection is unusable
            self.close()

    # --- ResponseReader's receiver ----------------------------------------------------------

    def on_head(self, head: ResponseHead) -> None:
        self.head = head
        self._to(State.BODY)
        hook, self._on_head = self._on_head, None
        if hook is not None:  # the exchange's own start, in this very call (see `send`)
            try:
                hook(self)
            except Exception as exc:  # a defect of the hook: ends this exchange only
                self.abort(exc)
                return
        if self._sink is None:
            # Hold the body until the proxy has answered the client's head (start_body).
            self._pause()
        self._resolve()

    def on_body(self, data: bytes) -> None:
        if self.state is State.CLOSED:  # the sink failed earlier in this same buffer
            return
        sink = self._sink
        if sink is None:
            self._pending.append(data)
            return
        try:
            sink(data)
        except Exception as exc:  # ClientGone, or a defect: ends this exchange only
            self.abort(exc)

    def on_end(self, clean: bool) -> None:
        self._clean_end = clean
        self._complete = True
        self._to(State.DONE)
        self._cancel_timer()
        self._resolve()

    def on_trailing(self) -> None:
        self._clean_end = False

    # --- one exchange ---------------------------------------------------------------------

    async def send(
        self,
        method: str,
        head: bytes,
        body: bytes,
        read_timeout: float,
        on_head: Callable[[Connection], None] | None = None,
    ) -> ResponseHead:
        """Write the request; returns the response head once it has arrived.

        `on_head(connection)`, if given, runs inside the `data_received` that parsed
        the head, before any body byte of that same read is handed on: it can answer
        the client and `start_body` with no turn of the event loop between vLLM's
        first bytes and the client (the task that awaits `send` resumes a turn later).
        It should not raise; if it does, the exchange fails with its exception.
        """
        transport = self.transport
        if transport is None:
            raise ProtocolStateError("upstream connection: send before connection_made")
        self._to(State.AWAIT_HEAD)
        self._on_head = on_head
        self._reader = ResponseReader(self, method)
        self._timeout = read_timeout
        self._last = self._loop.time()
        self._arm_timer(read_timeout)
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        while self.head is None:
            if self._error is not None:
                raise self._error
            if self.state is State.CLOSED:
                raise UpstreamBroken("the connection closed before the response head")
            await self._sleep()
        return self.head

    def start_body(self, sink: Callable[[bytes], None]) -> None:
        """From now on every body byte goes to `sink`, in `data_received`'s own call."""
        if self._sink is not None or self.head is None:
            raise ProtocolStateError("upstream connection: start_body twice or before the head")
        self._sink = sink
        while self._pending and self.state is not State.FAILED:
            self.on_body(self._pending.pop(0))
        self.resume_reading()

    async def wait(self) -> Wake:
        """Sleep until the body ended or a `wake()`; raises what failed the exchange."""
        while True:
            if self._error is not None:
                raise self._error
            if self._nudged:
                self._nudged = False
                return Wake.NUDGED
            if self._complete:
                return Wake.ENDED
            if self.state is State.CLOSED:
                raise UpstreamBroken("the connection closed")
            await self._sleep()

    def wake(self) -> None:
        """Nudge the proxy's task; kept until its next `wait()` if it is not waiting now."""
        self._nudged = True
        self._resolve()

    def pause_reading(self) -> None:
        self._pause()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and self.state is not State.CLOSED and not transport.is_reading():
            transport.resume_reading()

    def abort(self, exc: BaseException) -> None:
        """End the exchange with `exc` and drop the connection (vLLM stops generating)."""
        self._fail(exc)
        self.close()

    def reset(self) -> None:
        """Back to idle after a complete exchange, for the pool."""
        if not self.reusable:
            raise ProtocolStateError("upstream connection: reset of a connection not reusable")
        self._to(State.IDLE)
        self._reader = None
        self._sink = None
        self._on_head = None
        self.head = None
        self._got_bytes = False
        self._clean_end = False
        self._complete = False
        self._nudged = False
        self._waiter = None
        self._cancel_timer()
        self.resume_reading()
        self.assert_idle()

    def assert_idle(self) -> None:
        """The pool's hand-over check: nothing of an earlier exchange is left."""
        if (
            self.state is not State.IDLE
            or self._pending
            or self._sink is not None
            or self._on_head is not None
            or self._reader is not None
            or self.head is not None
            or self._error is not None
            or self._waiter is not None
        ):
            raise ProtocolStateError("upstream connection: not idle at hand-over")

    def close(self) -> None:
        self._cancel_timer()
        self._pending.clear()
        if self._reader is not None:  # it and its parser refer to each other and to us
            self._reader.close()
            self._reader = None
        if self.state is not State.CLOSED:
            self._to(State.CLOSED)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def discard(self) -> None:
        """The pool lets go of this connection for good: close it and drop what would tie
        it into reference cycles (a raised error's traceback holds frames that hold this
        connection; the sink holds the exchange), so it is freed at once by reference
        counting instead of by the cyclic GC, whose pauses stall every stream."""
        self.close()
        self._error = None
        self._sink = None
        self._on_head = None

    # --- internals ------------------------------------------------------------------------

    async def _sleep(self) -> None:
        if self._waiter is not None:
            raise ProtocolStateError("upstream connection: two tasks waiting")
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _resolve(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is not None or self.state is State.CLOSED:
            return
        self._error = exc  # also after DONE: the sink may fail on bytes held for it
        if self.state is not State.DONE:
            self._to(State.FAILED)
        self._cancel_timer()
        self._resolve()

    def _pause(self) -> None:
        transport = self.transport
        if transport is not None and self.state is not State.CLOSED and transport.is_reading():
            transport.pause_reading()

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        self._timer = None
        if self.state not in (State.AWAIT_HEAD, State.BODY):
            return
        transport = self.transport
        if transport is not None and not transport.is_reading():
            self._last = self._loop.time()  # paused by us (a slow client): not vLLM's silence
        silent = self._loop.time() - self._last
        if silent >= self._timeout - 0.001:
            self.abort(UpstreamTimeout(f"no data from the model server for {self._timeout:g} s"))
        else:
            self._arm_timer(self._timeout - silent)


class UpstreamPool:
    """Keep-alive connections to one vLLM server, at most `max_connections` in use."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_s: float,
        max_connections: int,
        queue_timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        self._secure = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._secure else 80)
        self.host_header = parts.netloc
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive_s = keepalive_s
        self._queue_timeout = queue_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[Connection] = collections.deque()
        self._ssl = ssl.create_default_context() if self._secure else None
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        on_head: Callable[[Connection], None] | None = None,
    ) -> Connection:
        """Send the request; returns its connection with the response head read
        (`on_head` as in `Connection.send`).

        The caller must hand the connection back with `release()` whatever happens.
        """
        head = request_head(method, target, self.host_header, headers, len(body))
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamBusy(
                f"no connection to the model server became free in {self._queue_timeout:g} s"
            ) from None
        try:
            for attempt in (1, 2):
                conn = await self._connection(fresh=attempt == 2)
                try:
                    await conn.send(method, head, body, self._read_timeout, on_head)
                except StaleConnection:
                    conn.discard()
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    conn.discard()
                    raise
                return conn
        except BaseException:
            self._slots.release()
            raise
        raise AssertionError("unreachable")

    def release(self, conn: Connection) -> None:
        """Pool the connection if its exchange ended cleanly (the invariant), else close it."""
        self._slots.release()
        if conn.reusable and not self._closed:
            conn.reset()
            conn.reused = True
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.discard()

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().discard()

    async def _connection(self, *, fresh: bool) -> Connection:
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                self._prune(now)
                conn.assert_idle()
                return conn
            conn.discard()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._secure else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to {self.host_header} took over {self._connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {self.host_header}: {exc}") from exc
        return conn

    def _prune(self, now: float) -> None:
        """Close idle connections that have expired (the oldest are at the left)."""
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive_s):
            idle.popleft().discard()
