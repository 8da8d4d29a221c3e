"""The proxy path: one request in, forwarded to vLLM, its answer streamed back, one record out.

Invariants:
- Every upstream chunk is written to the client as it arrives (no buffering);
  the only exception is the usage-only SSE event the sidecar itself asked for,
  which is removed (see `sse.UsageChunkFilter`).
- The capture sees each upstream chunk once, after it was written.
- Exactly one audit record per request, built when the exchange ends, whether
  it completed, was rejected, failed upstream or lost its client (`_finish`
  runs in `finally` at the latest, synchronously, so even a cancelled handler
  records).
- A client never holds a complete answer whose record is not spooled: the
  record is appended before the bytes that complete the answer leave — the
  SSE chunk carrying `data: [DONE]`, the last bytes of a body of known length,
  the end of a chunked body. Those bytes follow the upstream's end of stream,
  so holding them back costs the client nothing. (If the client then fails to
  take them, the record still says `completed`: it got the whole answer but
  its last bytes.)
- No total timeout: connect and read-idle timeouts only.
- A client that goes away closes the upstream connection, so vLLM aborts the
  generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import errors
from .capture import BodyCapture, StreamCapture
from .config import Config
from .headers import (
    choose_request_id,
    client_response_headers,
    missing_audit_header,
    recorded_headers,
    upstream_request_headers,
)
from .record import (
    BodyFacts,
    Identity,
    body_view,
    build_record,
    request_model,
    usage_view,
)
from .routing import parse_json_object, path_allowed, with_usage_requested
from .sse import FingerprintMemo, TerminalDetector, UsageChunkFilter, terminal_detector
from .upstream import ClientGone, Connection, UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
# Client write buffer above which reading from vLLM pauses until it drains below the low mark.
_WRITE_HIGH = 256 * 1024
_WRITE_LOW = 64 * 1024
_DONE_EVENT = b"data: [DONE]\n\n"


@dataclass
class Finished:
    """What the proxy hands to the recorder when an exchange ends."""

    record: dict[str, Any]
    started_at: float
    path: str
    status: int
    outcome: str
    latency_s: float
    ttft_s: float | None
    overhead_s: float | None


class Exchange:
    """Facts about one request, collected while it runs; turned into the record once."""

    def __init__(self, request: web.Request, clock: Callable[[], float]) -> None:
        self.started_at = time.time()
        self.started = clock()
        self.clock = clock
        self.request_id = choose_request_id(request.headers.get("x-request-id"))
        self.method = request.method
        self.path = request.path
        self.query = request.query_string
        self.headers = request.headers
        self.raw_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
        ]
        self.body = b""
        self.body_json: dict[str, Any] | None = None
        self.status = 0
        self.outcome = errors.COMPLETED
        self.error: dict[str, Any] | None = None
        self.response_headers: list[tuple[str, str]] = []
        self.capture: BodyCapture | StreamCapture | None = None
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.upstream_started: float | None = None
        self.finished = False

    def fail(self, err: errors.ProxyError) -> None:
        self.outcome = err.outcome
        self.error = err.as_record_error()

    def build(self, config: Config, identity: Identity) -> Finished:
        ended = self.clock()
        limit = config.max_recorded_body_bytes
        redact = config.redacted_headers
        request_view = body_view(
            BodyFacts(
                head=self.body[:limit],
                size=len(self.body),
                sha256=hashlib.sha256(self.body).hexdigest(),
                content_type=self.headers.get("content-type"),
                content_encoding=self.headers.get("content-encoding"),
                parsed=self.body_json,
            ),
            limit,
        )
        model = request_model(request_view["body"])
        usage: Any = None
        choices = events = stream_error = None
        ttft: float | None = None
        capture = self.capture
        if isinstance(capture, StreamCapture):
            response_view = capture.finish()
            assembler = capture.assembler
            choices, events = assembler.result(), assembler.events
            stream_error, usage = assembler.error, assembler.usage
            model = assembler.model or model
            if capture.first_token_at is not None:
                ttft = capture.first_token_at - self.started
            if stream_error is not None and self.outcome == errors.COMPLETED:
                self.outcome = errors.UPSTREAM_ERROR
                self.error = {"type": "stream_error", "message": _error_message(stream_error)}
        elif isinstance(capture, BodyCapture):
            response_view = body_view(
                capture.facts(self.content_type, self.content_encoding), limit
            )
            body = response_view["body"]
            if isinstance(body, dict):
                usage = body.get("usage")
                model = body.get("model") if isinstance(body.get("model"), str) else model
        else:
            response_view = {"body": None, "bytes": 0, "sha256": None, "truncated": False}
        if self.outcome == errors.COMPLETED and self.status >= 500:
            self.outcome = errors.UPSTREAM_ERROR
            self.error = {"type": "upstream_status", "message": _status_message(response_view)}
        record = build_record(
            request_id=self.request_id,
            started_at=self.started_at,
            method=self.method,
            path=self.path,
            query=self.query,
            request_headers=recorded_headers(self.raw_headers, redact),
            request_body=request_view,
            status_code=self.status,
            latency_ms=(ended - self.started) * 1000.0,
            ttft_ms=None if ttft is None else ttft * 1000.0,
            outcome=self.outcome,
            error=self.error,
            model=model,
            stream=bool(self.body_json and self.body_json.get("stream") is True),
            usage=usage_view(usage),
            response_headers=recorded_headers(self.response_headers, redact),
            response_body=response_view,
            choices=choices,
            events=events,
            stream_error=stream_error,
            identity=identity,
        )
        overhead = None if self.upstream_started is None else self.upstream_started - self.started
        return Finished(
            record=record,
            started_at=self.started_at,
            path=self.path,
            status=self.status,
            outcome=self.outcome,
            latency_s=ended - self.started,
            ttft_s=ttft,
            overhead_s=overhead,
        )


def _error_message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return str(error)[:500]


def _status_message(view: dict[str, Any]) -> str:
    body = view.get("body")
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:500]
    return "the model server answered with an error status"


class Proxy:
    """The aiohttp handler for every forwarded path."""

    def __init__(
        self,
        config: Config,
        upstream: UpstreamPool,
        identity: Identity,
        admit: Callable[[], errors.ProxyError | None],
        on_finished: Callable[[Finished], None],
    ) -> None:
        self._config = config
        self._upstream = upstream
        self._identity = identity
        self._admit = admit
        self._on_finished = on_finished
        self._fingerprints = FingerprintMemo()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.
        ex = Exchange(request, time.perf_counter)
        try:
            return await self._exchange(request, ex)
        except asyncio.CancelledError:
            transport = request.transport
            if transport is None or transport.is_closing():
                ex.outcome = errors.CLIENT_DISCONNECTED
                ex.error = {
                    "type": "client_disconnected",
                    "message": "the client closed the connection",
                }
            else:
                ex.outcome = errors.UPSTREAM_ERROR
                ex.error = {
                    "type": "sidecar_shutdown",
                    "message": "the sidecar stopped before the exchange ended",
                }
            raise
        finally:
            if not ex.finished:
                self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        """Build the record and hand it over (the spool append happens here); once."""
        ex.finished = True
        self._on_finished(ex.build(self._config, self._identity))

    async def _exchange(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        try:
            self._check(request)
            ex.body = await self._read_body(request)
        except errors.ProxyError as err:
            return self._reject(ex, err)
        ex.body_json = parse_json_object(ex.body)
        rewritten = with_usage_requested(ex.path, ex.body_json)
        headers = upstream_request_headers(ex.raw_headers, ex.request_id)
        ex.upstream_started = ex.clock()
        try:
            conn = await self._upstream.request(
                request.method, request.raw_path, headers, rewritten or ex.body
            )
        except UpstreamError as exc:
            return self._reject(ex, errors.from_upstream_exception(exc))
        try:
            return await self._relay(request, ex, conn, strip_usage=rewritten is not None)
        finally:
            # Pooled again only after a complete response; otherwise closed, so vLLM
            # sees the disconnect and stops generating.
            self._upstream.release(conn)

    def _check(self, request: web.Request) -> None:
        if not path_allowed(request.raw_path, self._config.allowed_paths):
            raise errors.not_found(request.path)
        # A CORS preflight cannot carry custom headers; it is forwarded (and audited) as is.
        if self._config.require_audit_headers and request.method != "OPTIONS":
            missing = missing_audit_header(request.headers)
            if missing is not None:
                raise errors.missing_audit_header(missing)
        refusal = self._admit()
        if refusal is not None:
            raise refusal

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._config.max_request_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.body_too_large(limit)
        parts: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_READ_SIZE):
            size += len(chunk)
            if size > limit:
                raise errors.body_too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def _reject(self, ex: Exchange, err: errors.ProxyError) -> web.Response:
        ex.fail(err)
        ex.status = err.status
        body = err.body()
        ex.capture = BodyCapture(self._config.max_recorded_body_bytes)
        ex.capture.feed(body)
        ex.content_type = "application/json"
        response = web.Response(status=err.status, body=body, content_type="application/json")
        response.headers["X-Request-Id"] = ex.request_id
        ex.response_headers = list(response.headers.items())
        return response

    async def _relay(
        self,
        request: web.Request,
        ex: Exchange,
        conn: Connection,
        *,
        strip_usage: bool,
    ) -> web.StreamResponse:
        head = conn.head
        assert head is not None
        ex.response_headers = head.raw_headers
        ex.status = head.status
        ex.content_type = head.header("content-type")
        ex.content_encoding = head.header("content-encoding")
        is_sse = (ex.content_type or "").lower().startswith("text/event-stream")
        response = web.StreamResponse(status=head.status, reason=head.reason or None)
        for name, value in client_response_headers(head.raw_headers, ex.request_id):
            response.headers.add(name, value)
        if not is_sse and head.content_length is not None:
            response.content_length = head.content_length
        if is_sse:
            capture: BodyCapture | StreamCapture = StreamCapture(
                self._config.max_recorded_body_bytes, ex.clock
            )
        else:
            capture = BodyCapture(self._config.max_recorded_body_bytes)
        ex.capture = capture
        await response.prepare(request)
        try:
            relay = _BodyRelay(
                request,
                response,
                conn,
                capture,
                UsageChunkFilter(self._fingerprints) if strip_usage and is_sse else None,
                # Bytes that complete the answer wait for the record (module docstring).
                None if is_sse else head.content_length,
                terminal_detector(ex.path) if is_sse else None,
            )
            conn.start_body(relay.on_chunk)
            while not await conn.wait():
                await relay.catch_up()
            await relay.catch_up()
            held = relay.end()
            self._finish(ex)
            if held:
                await response.write(held)
        except (ClientGone, ConnectionResetError):
            ex.outcome = errors.CLIENT_DISCONNECTED
            ex.error = {
                "type": "client_disconnected",
                "message": "the client closed the connection",
            }
            return response
        except UpstreamError as exc:
            ex.fail(errors.from_upstream_exception(exc))
            _abort_client(request, response)
            return response
        except Exception as exc:  # a defect of ours mid-relay: the record says so, not "completed"
            log.exception("relaying the answer failed", extra={"requestId": ex.request_id})
            ex.outcome = errors.UPSTREAM_ERROR
            ex.error = {"type": "sidecar_error", "message": type(exc).__name__}
            _abort_client(request, response)
            return response
        await response.write_eof()
        return response


class _BodyRelay:
    """Forwards vLLM's body to the client from inside the connection's `data_received`.

    Before the first write the response head is still in aiohttp's writer, so
    the first bytes go through `response.write` (on the proxy's task, woken for
    it); after that each chunk is written to the client's transport in the same
    call that received it, framed as aiohttp chose (chunked or not). A client
    that does not keep up pauses reading from vLLM until its buffer drains.
    """

    __slots__ = (
        "_capture",
        "_chunked",
        "_conn",
        "_direct",
        "_early",
        "_filter",
        "_held",
        "_length",
        "_received",
        "_response",
        "_terminal",
        "_transport",
    )

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        conn: Connection,
        capture: BodyCapture | StreamCapture,
        usage_filter: UsageChunkFilter | None,
        length: int | None,
        terminal: TerminalDetector | None = None,
    ) -> None:
        self._response = response
        self._terminal = terminal
        transport = request.transport
        if transport is None:  # the client left before the head was sent
            raise ConnectionResetError("the client closed the connection")
        self._transport = transport
        self._chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._conn = conn
        self._capture = capture
        self._filter = usage_filter
        self._length = length
        self._received = 0
        self._held = b""
        self._early: list[bytes] = []
        self._direct = False

    def on_chunk(self, chunk: bytes) -> None:
        """One piece of vLLM's body, in the order received; never blocks."""
        out = self._filter.feed(chunk) if self._filter is not None else chunk
        if self._held:  # more bytes after what looked like the end: not the end
            held, self._held = self._held, b""
            self._emit(held)
        if out:
            if self._terminal is not None:
                completes = self._terminal.feed(out)
            elif self._length is None:
                completes = out.endswith(_DONE_EVENT)
            else:
                self._received += len(out)
                completes = self._received >= self._length
            if completes:
                self._held = out
            else:
                self._emit(out)
        self._capture.feed(chunk)

    def _emit(self, data: bytes) -> None:
        if not self._direct:
            self._early.append(data)
            self._conn.wake()
            return
        transport = self._transport
        if transport.is_closing():
            raise ClientGone("the client closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        if transport.get_write_buffer_size() > _WRITE_HIGH:
            self._conn.pause_reading()
            self._conn.wake()

    async def catch_up(self) -> None:
        """On the proxy's task: write what waited for the head, or wait for a slow client."""
        if self._early:
            data = b"".join(self._early)
            self._early.clear()
            await self._response.write(data)  # sends the head too
        self._direct = True
        transport = self._transport
        if transport.is_closing():
            raise ClientGone("the client closed the connection")
        if transport.get_write_buffer_size() > _WRITE_HIGH:
            while transport.get_write_buffer_size() > _WRITE_LOW:
                if transport.is_closing():
                    raise ClientGone("the client closed the connection")
                await asyncio.sleep(0.005)
        self._conn.resume_reading()

    def end(self) -> bytes:
        """The bytes still held back once vLLM's body is complete."""
        held = self._held
        if self._filter is not None:
            held += self._filter.flush()
        self._held = b""
        return held


def _abort_client(request: web.Request, response: web.StreamResponse) -> None:
    """End the client's connection without a terminating chunk: the body is incomplete."""
    response.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
