"""The connection to vLLM: a small HTTP/1.1 client that pushes each response chunk to a callback.

Why not aiohttp's client here: its response body goes through a StreamReader,
so every upstream chunk (one SSE event = one token) costs a future, a task
wake-up and a read coroutine before the proxy can forward it. Profiles of the
sidecar under streaming load showed that machinery, not auditing, as the bulk
of the per-event cost. Here the event loop's `data_received` decodes the HTTP
framing and hands the payload straight to the proxy's callback, which writes it
to the client in the same call; the proxy's task sleeps until the body ends (or
the client needs draining). The health probe still uses aiohttp's client.

Scope: what vLLM's server (uvicorn/h11) speaks, and nothing it does not —
HTTP/1.1, a body framed by Content-Length, chunked transfer coding or the end
of the connection; no 1xx other than being skipped, no upgrades, no pipelining.

Invariants:
- A connection carries one exchange at a time; it is pooled again only after a
  complete, well-framed response that allows keep-alive.
- Idle connections are reused most-recent first and never after
  `keepalive_s` (below vLLM's own 5 s idle close).
- Closing a connection mid-response is how an exchange is aborted: vLLM sees
  the disconnect and stops generating.
- A request sent on a reused connection that the server closed before any byte
  of its answer is retried once on a fresh connection (`StaleConnection`).
- No total timeout; `read_timeout` bounds each silence (before the head and
  between body bytes), checked lazily so a busy stream costs no timer churn.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 4 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Body framing of a response.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# Phases of a connection.
_IDLE, _HEAD, _BODY, _DONE, _FAILED = range(5)
# States of the chunked decoder.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class UpstreamError(Exception):
    """Talking to vLLM failed; `errors.from_upstream_exception` maps the subclasses."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be opened."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or waiting for the next bytes, took longer than allowed."""


class UpstreamBroken(UpstreamError):
    """The connection ended or spoke something that is not HTTP/1.1 mid-exchange."""


class StaleConnection(UpstreamBroken):
    """A reused connection closed before any byte of the answer: safe to retry."""


class ClientGone(Exception):
    """The client's connection closed while its answer was being relayed."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    raw_headers: list[tuple[str, str]]
    content_length: int | None
    keep_alive: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None


def parse_head(data: bytes, method: str) -> tuple[ResponseHead, int, int]:
    """Status line and headers -> (head, framing, body length for _LENGTH). Pure."""
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise UpstreamBroken(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    version = parts[0]
    status = int(parts[1])
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = False
    connection = ""
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise UpstreamBroken(f"malformed header line: {line[:80]!r}")
        key = name.decode("latin-1")
        text = value.strip().decode("latin-1")
        headers.append((key, text))
        lower = key.lower()
        if lower == "content-length":
            if not text.isdigit() or (length is not None and int(text) != length):
                raise UpstreamBroken(f"bad content-length: {text[:40]!r}")
            length = int(text)
        elif lower == "transfer-encoding":
            chunked = text.lower().rsplit(",", 1)[-1].strip() == "chunked"
            if not chunked:
                raise UpstreamBroken(f"unsupported transfer-encoding: {text[:40]!r}")
        elif lower == "connection":
            connection += "," + text.lower()
    tokens = {t.strip() for t in connection.split(",")}
    keep_alive = "close" not in tokens and (version == b"HTTP/1.1" or "keep-alive" in tokens)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        framing, size = _NO_BODY, 0
    elif chunked:
        framing, size, length = _CHUNKED, 0, None
    elif length is not None:
        framing, size = (_LENGTH, length) if length else (_NO_BODY, 0)
    else:
        framing, size, keep_alive = _UNTIL_CLOSE, 0, False
    return ResponseHead(status, reason, headers, length, keep_alive), framing, size


def request_bytes(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """The request head (and body) as sent on the wire. Pure."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


class ChunkedDecoder:
    """Incremental decoder of the chunked transfer coding (RFC 9112 §7.1); pure, bytes in and out.

    `feed()` returns the payload bytes the input completed (possibly empty);
    once the last chunk and the trailer section have been read, `done` is set
    and `trailing` says whether bytes followed the message.
    """

    __slots__ = ("_buf", "_left", "_state", "done", "trailing")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0
        self._state = _SIZE
        self.done = False
        self.trailing = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.trailing = self.trailing or bool(data)
            return b""
        if self._state == _SIZE and not self._buf:
            # The common case on a token stream: the read holds exactly one whole chunk.
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0 and _HEX.fullmatch(data, 0, eol) is not None:
                start = eol + 2
                end = start + int(data[:eol], 16)
                if end > start and len(data) == end + 2 and data.endswith(b"\r\n"):
                    return data[start:end]
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                take = min(self._left, size - pos)
                out.append(data if take == size else data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif state == _DATA_END:  # the CRLF after a chunk's data
                if size - pos < 2:
                    self._buf = data[pos:]
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise UpstreamBroken("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            else:  # a chunk-size line, or a trailer line after the last chunk
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._buf = data[pos:]
                    if len(self._buf) > MAX_LINE_BYTES:
                        raise UpstreamBroken("chunk size or trailer line too long")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if state == _TRAILER:
                    if not line:  # the blank line that ends the message
                        self.done = True
                        self.trailing = pos < size
                        break
                    continue
                digits = line.split(b";", 1)[0].strip()
                if _HEX.fullmatch(digits) is None:
                    raise UpstreamBroken(f"bad chunk size {digits[:20]!r}")
                chunk = int(digits, 16)
                if chunk == 0:
                    self._state = _TRAILER
                else:
                    self._left = chunk
                    self._state = _DATA
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


class Connection(asyncio.Protocol):
    """One keep-alive connection to vLLM; see the module docstring for its life."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._phase = _IDLE
        self._method = "GET"
        self._buf = b""
        self._framing = _NO_BODY
        self._left = 0
        self._decoder = ChunkedDecoder()
        self._sink: Callable[[bytes], None] | None = None
        self._pending: list[bytes] = []
        self._waiter: asyncio.Future[bool] | None = None
        self._result: bool | BaseException | None = None
        self._reusable = False
        self._timeout = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.head: ResponseHead | None = None
        self.got_bytes = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        phase = self._phase
        if phase == _BODY and self._framing == _UNTIL_CLOSE:
            self._reusable = False
            self._finish()
        elif phase == _HEAD and not self.got_bytes and self.reused:
            self._fail(StaleConnection("the pooled connection was closed by the model server"))
        elif phase in (_HEAD, _BODY):
            detail = "closed before the end of the response"
            self._fail(UpstreamBroken(f"{detail}: {exc}" if exc else detail))

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        phase = self._phase
        if phase == _BODY:
            self._body(data)
        elif phase == _HEAD:
            self.got_bytes = True
            self._buf += data
            self._parse_head()
        elif phase == _IDLE:  # bytes nobody asked for: the connection is unusable
            self.close()
        else:  # bytes after a complete response: not HTTP we understand; do not reuse
            self._reusable = False

    # --- one exchange ------------------------------------------------------------------

    async def send(self, method: str, data: bytes, read_timeout: float) -> ResponseHead:
        """Write the request; returns the response head once it has arrived."""
        assert self._phase == _IDLE and self.transport is not None
        self._method = method
        self._phase = _HEAD
        self._timeout = read_timeout
        self._last = self._loop.time()
        self._arm_timer(read_timeout)
        self.transport.write(data)
        await self._wait()
        assert self.head is not None
        return self.head

    def start_body(self, sink: Callable[[bytes], None]) -> None:
        """From now on every body chunk goes to `sink`, in `data_received`'s own call."""
        self._sink = sink
        if self._pending:
            early = b"".join(self._pending)
            self._pending.clear()
            self._deliver(early)
        self.resume_reading()

    async def wait(self) -> bool:
        """Sleep until the body ended (True) or `wake()` (False); raises what failed it."""
        return await self._wait()

    def wake(self) -> None:
        self._notify(False)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self.closed and not transport.is_reading():
            transport.resume_reading()

    def abort(self, exc: BaseException) -> None:
        """End the exchange with `exc` and drop the connection (vLLM stops generating)."""
        self._fail(exc)
        self.close()

    @property
    def reusable(self) -> bool:
        return self._phase == _DONE and self._reusable and not self.closed

    def reset(self) -> None:
        """Back to idle after a complete exchange, for the pool."""
        self._phase = _IDLE
        self._buf = b""
        self._sink = None
        self._result = None
        self._waiter = None
        self.head = None
        self.got_bytes = False
        self._cancel_timer()
        self.resume_reading()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # --- internals ---------------------------------------------------------------------

    async def _wait(self) -> bool:
        result = self._result
        if result is None:
            self._waiter = self._loop.create_future()
            try:
                return await self._waiter
            finally:
                self._waiter = None
        if isinstance(result, BaseException):
            raise result
        return result

    def _finish(self) -> None:
        if self._phase in (_DONE, _FAILED):
            return
        self._phase = _DONE
        self._result = True
        self._cancel_timer()
        self._notify(True)

    def _fail(self, exc: BaseException) -> None:
        if self._phase in (_DONE, _FAILED):
            return
        self._phase = _FAILED
        self._result = exc
        self._reusable = False
        self._cancel_timer()
        self._notify(exc)

    def _notify(self, outcome: bool | BaseException) -> None:
        """Wake the task sleeping in `_wait()`, if any, with `outcome`."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def _parse_head(self) -> None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    self._fail(UpstreamBroken("response head too large"))
                    self.close()
                return
            try:
                head, framing, size = parse_head(self._buf[:end], self._method)
            except UpstreamBroken as exc:
                self._fail(exc)
                self.close()
                return
            rest = self._buf[end + 4 :]
            self._buf = b""
            if 100 <= head.status < 200:  # an interim answer: the real one follows
                self._buf = rest
                continue
            break
        self.head = head
        self._framing = framing
        self._left = size
        self._decoder = ChunkedDecoder()
        self._reusable = head.keep_alive
        self._phase = _BODY
        if framing == _NO_BODY:
            self._reusable = self._reusable and not rest
            self._finish()
        else:
            # Hold the body until the proxy has answered the client's head (start_body).
            if self.transport is not None:
                self.transport.pause_reading()
            if rest:
                self._body(rest)
        self._notify(True)  # the head is here (a no-op if the body already ended)

    def _body(self, data: bytes) -> None:
        framing = self._framing
        if framing == _CHUNKED:
            self._chunked(data)
        elif framing == _LENGTH:
            left = self._left
            if len(data) >= left:
                if len(data) > left:
                    self._reusable = False  # bytes past the body: not HTTP we understand
                    data = data[:left]
                self._left = 0
                self._deliver(data)
                self._finish()
            else:
                self._left = left - len(data)
                self._deliver(data)
        else:  # _UNTIL_CLOSE
            self._deliver(data)

    def _chunked(self, data: bytes) -> None:
        decoder = self._decoder
        try:
            out = decoder.feed(data)
        except UpstreamBroken as exc:
            self._fail(exc)
            self.close()
            return
        if out:
            self._deliver(out)
        if decoder.done:
            if decoder.trailing:
                self._reusable = False
            self._finish()

    def _deliver(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._pending.append(data)
            return
        try:
            sink(data)
        except Exception as exc:  # ClientGone, or a bug: ends this exchange only
            self.abort(exc)

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        self._timer = None
        if self._phase not in (_HEAD, _BODY):
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
    ) -> None:
        parts = urlsplit(base_url)
        self._secure = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._secure else 80)
        self.host_header = parts.netloc
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[Connection] = collections.deque()
        self._ssl = ssl.create_default_context() if self._secure else None
        self._closed = False

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Connection:
        """Send the request; returns its connection with the response head read.

        The caller must hand the connection back with `release()` whatever happens.
        """
        data = request_bytes(method, target, self.host_header, headers, body)
        await self._slots.acquire()
        try:
            for attempt in (1, 2):
                conn = await self._connection(fresh=attempt == 2)
                try:
                    await conn.send(method, data, self._read_timeout)
                except StaleConnection:
                    conn.close()
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    conn.close()
                    raise
                return conn
        except BaseException:
            self._slots.release()
            raise
        raise AssertionError("unreachable")

    def release(self, conn: Connection) -> None:
        """Pool the connection if its exchange ended cleanly, else close it."""
        self._slots.release()
        if conn.reusable and not self._closed:
            conn.reset()
            conn.reused = True
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connection(self, *, fresh: bool) -> Connection:
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                self._prune(now)
                return conn
            conn.close()
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
            idle.popleft().close()
