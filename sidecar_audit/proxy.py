"""The proxy path: one request in, forwarded to vLLM, its answer streamed back, one record out.

Invariants:
- Every upstream chunk is written to the client as it arrives, in the same
  call that received it (no buffering, no wake-up in between); the client's
  answer starts in the call that parsed vLLM's head (`_begin`, the connection's
  head hook), so the head and the first events that came with it leave in that
  same call, not a loop turn later when the handler's task resumes; the only
  exception is the usage-only SSE event the sidecar itself asked for, which is
  removed (see `sse.UsageChunkFilter`).
- The capture sees each upstream chunk once, after it was written.
- Exactly one audit record per request, built when the exchange ends, whether
  it completed, was rejected, failed upstream, lost its client or hit a defect
  of ours (`_finish` runs in `finally` at the latest, synchronously, so even a
  cancelled handler records; if the full record cannot be built, a minimal one
  is — see `minimal_record`).
- A client never holds a complete answer whose record is not spooled: the
  record is appended before the bytes that complete the answer leave — the
  SSE chunk carrying `data: [DONE]`, the last bytes of a body of known length,
  the end of a chunked body, the head of an answer without a body (to HEAD,
  204, 304, `Content-Length: 0`).
- The upstream connection is handed back to the pool only by `release`, which
  reuses it only if its response was read to the end and every byte went to
  this exchange's relay (upstream.py states the invariant); a client that left
  before the relay started therefore closes it.
- Outcomes are decided in one place, `errors.outcome_of`, from the facts
  collected here.
- Deadlines: the request body (`REQUEST_BODY_TIMEOUT_S`, 408), a free upstream
  connection (`UPSTREAM_QUEUE_TIMEOUT_S`, 503), vLLM's silence
  (`UPSTREAM_READ_TIMEOUT_S`, 504), a client that takes nothing
  (`CLIENT_WRITE_STALL_S`, disconnected). No total timeout.
- A client that goes away closes the upstream connection, so vLLM aborts the
  generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from . import errors
from .capture import BodyCapture, StreamCapture
from .client_stream import ClientStream
from .config import Config
from .headers import (
    REDACTED,
    IdentityProblem,
    Redaction,
    choose_request_id,
    client_response_headers,
    read_edge,
    read_identity,
    recorded_headers,
    recorded_query,
    upstream_request_headers,
)
from .json_body import TopLevel, python_only_json, record_json, set_member
from .record import (
    BodyFacts,
    Identity,
    body_view,
    build_record,
    inflates_beyond,
    minimal_record,
    usage_view,
)
from .routing import GENERATION_PATHS, path_allowed, usage_options_to_send, will_stream
from .sse import FingerprintMemo, TerminalDetector, UsageChunkFilter, terminal_detector
from .upstream import (
    ClientGone,
    Connection,
    ProtocolStateError,
    UpstreamError,
    UpstreamPool,
    Wake,
)

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
_DONE_EVENT = b"data: [DONE]\n\n"
# The request members the proxy reads (json_body.TopLevel); nothing else is parsed.
REQUEST_MEMBERS = ("model", "stream", "stream_options", "n")
# Read inside a stream_options member too large to decode whole (padding cannot hide them).
_NESTED_MEMBERS = {"stream_options": ("include_usage", "continuous_usage_stats")}
_RESPONSE_MEMBERS = ("model", "usage", "system_fingerprint")
_ERROR_MEMBERS = ("error", "message")
FINGERPRINT_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/chat/completions/batch"}
)


@dataclass(frozen=True)
class Readers:
    """The JSON member readers of answers, built once per proxy (each is a compiled decoder)."""

    response: TopLevel
    error: TopLevel


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
        # `CONNECT host:port` has no path (aiohttp reads its target as an authority): the
        # record keeps the target as sent, but for credentials in it.
        self.path = request.path or _without_userinfo(request.raw_path)
        self.query = request.query_string
        self.closes_connection = closes_connection(request)
        # The wire's bytes as text, one char per byte: forwarded to vLLM unchanged.
        self.headers_in = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
        ]
        self.headers_sent: list[tuple[str, str]] | None = None  # what vLLM received
        self.identity: dict[str, str] = {}
        self.edge: dict[str, str | None] = {}
        self.body = b""
        self.members: dict[str, Any] | None = None
        self.usage_added = False
        # vLLM's system_fingerprint, when the answer had the member (its value may be null)
        self.fingerprint: tuple[Any] | None = None
        self.facts = errors.Facts()
        self.response_headers: list[tuple[str, str]] = []
        self.capture: BodyCapture | StreamCapture | None = None
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.upstream_started: float | None = None
        self.finished = False

    def build(
        self, config: Config, identity: Identity, redaction: Redaction, readers: Readers
    ) -> Finished:
        ended = self.clock()
        limit = config.max_recorded_body_bytes
        request_view = body_view(self._request_facts(limit), limit)
        model = _text(self.members, "model")
        usage: Any = None
        choices = events = None
        ttft: float | None = None
        capture = self.capture
        facts = self.facts
        status_head = b""
        if isinstance(capture, StreamCapture):
            response_view = capture.finish()
            assembler = capture.assembler
            choices, events = assembler.result(), assembler.events
            facts.stream_error, usage = assembler.error, assembler.usage
            model = assembler.model or model
            if capture.first_token_at is not None:
                ttft = capture.first_token_at - self.started
        elif isinstance(capture, BodyCapture):
            body_facts = capture.facts(self.content_type, self.content_encoding)
            response_view = body_view(body_facts, limit)
            status_head = body_facts.head
            if not response_view["truncated"] and body_facts.content_encoding is None:
                members = readers.response.read(body_facts.head) or {}
                usage = members.get("usage")
                model = _text(members, "model") or model
                # Only the routes vLLM stamps with its one per-server value (WIRE_FORMAT.md):
                # a route answering `"system_fingerprint": null` must not teach the memo.
                if (
                    facts.status == 200
                    and self.path in FINGERPRINT_PATHS
                    and "system_fingerprint" in members
                ):
                    self.fingerprint = (members["system_fingerprint"],)
        else:
            response_view = {"body": None, "bytes": 0, "sha256": None, "truncated": False}
        outcome, error = errors.outcome_of(facts)
        if error is not None and error["type"] == "upstream_status":
            error["message"] = _status_message(readers.error, status_head) or error["message"]
        sent = self.headers_sent if self.headers_sent is not None else self.headers_in
        request_headers = recorded_headers(sent, redaction)
        record = build_record(
            request_id=self.request_id,
            started_at=self.started_at,
            method=self.method,
            path=self.path,
            query=recorded_query(self.query, redaction),
            request_headers=request_headers,
            identity_headers=self.identity,
            edge=self.edge,
            request_body=request_view,
            status_code=facts.status,
            latency_ms=(ended - self.started) * 1000.0,
            ttft_ms=None if ttft is None else ttft * 1000.0,
            outcome=outcome,
            error=error,
            model=model,
            stream=will_stream(self.path, self.members) or isinstance(capture, StreamCapture),
            usage=usage_view(usage),
            response_headers=recorded_headers(self.response_headers, redaction),
            response_body=response_view,
            choices=choices,
            events=events,
            stream_error=facts.stream_error,
            identity=identity,
        )
        if self.usage_added:
            record["request"]["usageRequestedBySidecar"] = True
        if isinstance(capture, StreamCapture) and capture.assembler.invalid_events:
            # Events that were not JSON we could read: the answer may be incomplete.
            record["response"]["invalidEvents"] = capture.assembler.invalid_events
        overhead = None if self.upstream_started is None else self.upstream_started - self.started
        return Finished(
            record=record,
            started_at=self.started_at,
            path=self.path,
            status=facts.status,
            outcome=outcome,
            latency_s=ended - self.started,
            ttft_s=ttft,
            overhead_s=overhead,
        )

    def _request_facts(self, limit: int) -> BodyFacts:
        body = self.body
        encoding = _header(self.headers_in, "content-encoding")
        return BodyFacts(
            head=body[:limit],
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            content_type=_header(self.headers_in, "content-type"),
            content_encoding=encoding,
            parsed=record_json(body) if encoding is None and len(body) <= limit else None,
        )

    def minimal(self, identity: Identity, failure: BaseException) -> Finished:
        """The record when the full one cannot be built: ids, identity, status, sizes, hashes."""
        body = self.body
        record = minimal_record(
            request_id=self.request_id,
            started_at=self.started_at,
            method=self.method,
            path=self.path,
            identity_headers=self.identity,
            status=self.facts.status,
            failure=f"the full record could not be built: {type(failure).__name__}",
            request_bytes=len(body),
            request_sha256=hashlib.sha256(body).hexdigest(),
            response_bytes=getattr(self.capture, "size", None),
            sidecar=identity.as_dict(),
        )
        latency = self.clock() - self.started
        return Finished(
            record,
            self.started_at,
            self.path,
            self.facts.status,
            errors.SIDECAR_ERROR,
            latency,
            None,
            None,
        )


def closes_connection(request: web.Request) -> bool:
    """Whether the answer to `request` must end its connection, whoever answers it.

    Nothing is ever tunnelled or upgraded here (the upgrade headers are hop-by-hop), but
    aiohttp reads the bytes after a CONNECT's head as the next request whatever body the
    CONNECT declared, and treats a connection whose request asked to upgrade as upgraded:
    it drops the rest of the read that carried it (h2c, tcp) or holds it back (websocket).
    Kept open, the connection would answer a body as a request, unaudited, or leave a
    request pipelined behind an upgrade waiting for the keep-alive timeout.
    """
    return request.method == hdrs.METH_CONNECT or hdrs.UPGRADE in request.headers


def _without_userinfo(authority: str) -> str:
    """A CONNECT target with any `user:password@` replaced: authority-form has none (RFC 9112
    3.2.3), but aiohttp accepts one, and the target goes into the record, the 404's message
    and the log line. Split where aiohttp's URL parser splits it, at the last `@`."""
    _, at, host = authority.rpartition("@")
    return f"{REDACTED}@{host}" if at else authority


def _text(members: dict[str, Any] | None, name: str) -> str | None:
    value = (members or {}).get(name)
    return value if isinstance(value, str) else None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _status_message(reader: TopLevel, head: bytes) -> str | None:
    """vLLM's error message from the start of an error body, if it is in the usual shape."""
    body = reader.read(head) if head else None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:500]
        if isinstance(body.get("message"), str):
            return body["message"][:500]
    return None


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
        self._redaction = Redaction(config.redacted_headers, config.redact_name_patterns)
        self._members = TopLevel(REQUEST_MEMBERS, _NESTED_MEMBERS)
        self._readers = Readers(TopLevel(_RESPONSE_MEMBERS), TopLevel(_ERROR_MEMBERS))
        self._fingerprints = FingerprintMemo()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.
        ex = Exchange(request, time.perf_counter)
        try:
            return await self._exchange(request, ex)
        except asyncio.CancelledError:
            transport = request.transport
            if transport is None or transport.is_closing():
                ex.facts.client_gone = "the client closed the connection"
            else:
                ex.facts.shutdown = True
            raise
        except Exception as exc:  # a defect of ours before the answer started
            log.exception("handling the request failed", extra={"requestId": ex.request_id})
            ex.facts.defect = type(exc).__name__
            return self._reply(ex, errors.sidecar_failure(type(exc).__name__))
        finally:
            if not ex.finished:
                self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        """Build the record and hand it over (the spool append happens there); exactly once."""
        ex.finished = True
        try:
            done = ex.build(self._config, self._identity, self._redaction, self._readers)
        except Exception as exc:
            log.exception("building the audit record failed", extra={"requestId": ex.request_id})
            done = ex.minimal(self._identity, exc)
        if ex.fingerprint is not None and not self._fingerprints.known:
            # One fingerprint per vLLM server: any answer teaches it, so even the first
            # stream with n > 1 need not hold its finished choices for the usage chunk.
            self._fingerprints.learn(ex.fingerprint[0])
        self._on_finished(done)

    async def _exchange(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        try:
            self._check(request, ex)
            ex.body = await self._read_body(request)
            self._check_encoding(ex)
            body = self._upstream_body(ex)
        except errors.ProxyError as err:
            return self._reject(ex, err)
        headers = upstream_request_headers(ex.headers_in, ex.request_id)
        ex.headers_sent = headers
        ex.upstream_started = ex.clock()
        answer = _Answer()
        strip_usage = ex.usage_added

        def begin(conn: Connection) -> None:
            self._begin(request, ex, conn, answer, strip_usage=strip_usage)

        try:
            conn = await self._upstream.request(
                request.method, request.raw_path, headers, body, on_head=begin
            )
        except UpstreamError as exc:
            failure = errors.from_upstream_exception(exc)
            if failure.outcome == errors.REJECTED:  # e.g. no free connection: vLLM never saw it
                ex.headers_sent = None
                ex.facts.rejected = failure
            else:
                ex.facts.upstream = failure
            return self._reply(ex, failure)
        except BaseException:
            # Cancelled after the head hook ran (the client left in the turn that read
            # vLLM's head): an error the hook kept is never re-raised, and its traceback
            # holds `_begin`'s frame, which holds `answer` (a cycle for the cyclic GC).
            answer.error = None
            raise
        try:
            return await self._relay(request, ex, conn, answer)
        finally:
            # Pooled again only after a complete response (upstream.py's invariant);
            # otherwise closed, so vLLM sees the disconnect and stops generating.
            self._upstream.release(conn)

    def _check(self, request: web.Request, ex: Exchange) -> None:
        if not path_allowed(request.raw_path, self._config.allowed_paths, request.method):
            # Refused whoever asks, and the path decides the answer (a 404, not a 400 for
            # the headers); the record still names the caller as far as the headers can.
            with contextlib.suppress(IdentityProblem):
                ex.identity = read_identity(request.raw_headers, required=False)
            if self._config.trust_edge_headers:
                ex.edge = read_edge(request.raw_headers)
            raise errors.not_found(ex.path)
        # A CORS preflight cannot carry custom headers; it is forwarded (and audited) as is.
        required = self._config.require_audit_headers and request.method != "OPTIONS"
        try:
            ex.identity = read_identity(request.raw_headers, required=required)
        except IdentityProblem as problem:
            if problem.kind == "missing":
                raise errors.missing_audit_header(problem.header) from None
            if problem.kind == "repeated":
                raise errors.repeated_audit_header(problem.header) from None
            raise errors.bad_audit_header(problem.header, problem.why) from None
        if self._config.trust_edge_headers:
            ex.edge = read_edge(request.raw_headers)
        refusal = self._admit()
        if refusal is not None:
            raise refusal

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._config.max_request_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.body_too_large(limit)
        buffer = bytearray()
        try:
            async with asyncio.timeout(self._config.request_body_timeout):
                while chunk := await request.content.read(_READ_SIZE):
                    if len(buffer) + len(chunk) > limit:
                        raise errors.body_too_large(limit)
                    buffer += chunk
        except TimeoutError:
            raise errors.body_timeout(self._config.request_body_timeout) from None
        return bytes(buffer)

    def _check_encoding(self, ex: Exchange) -> None:
        encoding = _header(ex.headers_in, "content-encoding")
        limit = self._config.max_request_body_bytes
        if encoding is not None and inflates_beyond(ex.body, encoding, limit):
            raise errors.decoded_body_too_large(limit)

    def _upstream_body(self, ex: Exchange) -> bytes:
        """The bytes vLLM gets: the client's, with usage asked for when the sidecar needs it.

        Read as vLLM reads them: vLLM never undoes a Content-Encoding (a plain body
        labelled gzip is run as plain JSON; a real gzip body fails to parse here and
        there alike). A body vLLM's json.loads may accept but this reader cannot is
        refused on the paths whose usage the sidecar must ask for.
        """
        ex.members = self._members.read(ex.body)
        if ex.members is None and ex.body and ex.path in GENERATION_PATHS:
            why = python_only_json(ex.body)
            if why is not None:
                raise errors.python_only_json(why)
        options = usage_options_to_send(ex.path, ex.members)
        if options is None:
            return ex.body
        ex.usage_added = True
        return set_member(ex.body, "stream_options", options)

    def _reject(self, ex: Exchange, err: errors.ProxyError) -> web.Response:
        # A copy never raised is kept: the raised one's traceback holds the frames that
        # hold `ex` (a reference cycle per refused request, left to the cyclic GC).
        ex.facts.rejected = replace(err)
        return self._reply(ex, err)

    def _reply(self, ex: Exchange, err: errors.ProxyError) -> web.Response:
        """Answer with one of our errors (OpenAI shape) and keep it for the record."""
        ex.facts.status = err.status
        body = err.body()
        ex.capture = BodyCapture(self._config.max_recorded_body_bytes)
        ex.capture.feed(body)
        ex.content_type = "application/json"
        response = web.Response(status=err.status, body=body, content_type="application/json")
        response.headers["X-Request-Id"] = ex.request_id
        if ex.closes_connection:
            response.force_close()
        ex.response_headers = list(response.headers.items())
        return response

    def _begin(
        self,
        request: web.Request,
        ex: Exchange,
        conn: Connection,
        answer: _Answer,
        *,
        strip_usage: bool,
    ) -> None:
        """Answer the client's head and start relaying the body: the connection's head
        hook, run inside the `data_received` that parsed vLLM's head. Never raises;
        what failed is kept in `answer` for the handler's task (`_relay`)."""
        try:
            head = conn.head
            assert head is not None
            ex.response_headers = head.raw_headers
            ex.facts.status = head.status
            ex.content_type = head.header("content-type")
            ex.content_encoding = head.header("content-encoding")
            is_sse = (ex.content_type or "").lower().startswith("text/event-stream")
            response = web.StreamResponse(status=head.status, reason=head.reason or None)
            for name, value in client_response_headers(head.raw_headers, ex.request_id):
                response.headers.add(name, value)
            if ex.closes_connection:
                response.force_close()
            if not is_sse and head.content_length is not None:
                response.content_length = head.content_length
            elif request.version < HttpVersion11:
                # No chunked coding in HTTP/1.0: this body ends with the connection. aiohttp
                # omits `Connection: keep-alive` here but keeps the connection open (its
                # _prepare_headers drops keep-alive only locally), so the client would never
                # see the end and the next answer would be glued into this one.
                response.force_close()
            if is_sse:
                capture: BodyCapture | StreamCapture = StreamCapture(
                    self._config.max_recorded_body_bytes, ex.clock
                )
            else:
                capture = BodyCapture(self._config.max_recorded_body_bytes)
            ex.capture = capture
            answer.response = response
            # An answer with no body is complete with its head: that waits for the record.
            bodyless = (
                request.method == "HEAD"
                or head.status in (204, 304)
                or (head.content_length == 0 and not is_sse)
            )
            answer.client = ClientStream.open(response, request, hold_head=bodyless)
            relay = answer.relay = _BodyRelay(
                answer.client,
                conn,
                capture,
                UsageChunkFilter(self._fingerprints) if strip_usage and is_sse else None,
                # Bytes that complete the answer wait for the record (module docstring).
                None if is_sse else head.content_length,
                terminal_detector(ex.path) if is_sse else None,
            )
            conn.start_body(relay.on_chunk)
        except Exception as exc:
            answer.error = exc

    async def _relay(
        self, request: web.Request, ex: Exchange, conn: Connection, answer: _Answer
    ) -> web.StreamResponse:
        """The rest of the exchange in the handler's task: wait for the body's end (draining
        a slow client meanwhile), record, then let the held end of the answer go."""
        response, client, relay = answer.response, answer.client, answer.relay
        if response is None:  # the answer could not even begin: a defect of ours
            answer.reraise()
            raise ProtocolStateError("the answer did not begin with vLLM's head")
        stall = self._config.client_write_stall
        try:
            answer.reraise()  # e.g. the client had gone before its head could be sent
            assert client is not None and relay is not None
            while await conn.wait() is Wake.NUDGED:
                await client.drain(stall)
                conn.resume_reading()
            held = relay.end()
            # A client lost while the body came (even in the turn that read vLLM's head,
            # whole body included) is gone, not served: known before the record says so.
            client.check()
            self._finish(ex)
            await client.end(held, stall)
        except (ClientGone, ConnectionError) as exc:
            ex.facts.client_gone = str(exc) or "the client closed the connection"
            if client is not None:
                client.abort()
        except UpstreamError as exc:
            ex.facts.upstream = errors.from_upstream_exception(exc)
            if client is not None:
                client.abort()
        except Exception as exc:  # a defect of ours mid-relay: the record says so
            log.exception("relaying the answer failed", extra={"requestId": ex.request_id})
            ex.facts.defect = type(exc).__name__
            if client is not None:
                client.abort()
            elif response.prepared:
                # The head never left, but aiohttp's writer was set up for it (a prepare()
                # that suspended): whatever aiohttp would write now (a chunk terminator, or
                # a 500 framed for this writer) is not a well-formed answer. Cut instead.
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
        return response


class _Answer:
    """What `Proxy._begin` started for one exchange, or the error that stopped it."""

    __slots__ = ("client", "error", "relay", "response")

    def __init__(self) -> None:
        self.response: web.StreamResponse | None = None
        self.client: ClientStream | None = None
        self.relay: _BodyRelay | None = None
        self.error: Exception | None = None

    def reraise(self) -> None:
        """Raise the kept error, once. It is taken out of here, and out of this frame
        when it leaves: its traceback holds `_begin`'s frame, which holds this object,
        and this frame; either reference would make a cycle for the cyclic GC."""
        error, self.error = self.error, None
        if error is not None:
            try:
                raise error
            finally:
                error = None


class _BodyRelay:
    """Forwards vLLM's body to the client from inside the connection's `data_received`.

    The response head is already on the wire (ClientStream sent it), so each
    chunk is written to the client in the same call that received it. A client
    that does not keep up pauses reading from vLLM and nudges the proxy's task,
    which waits for the client to drain (or to stall out).
    """

    __slots__ = (
        "_capture",
        "_client",
        "_conn",
        "_filter",
        "_held",
        "_length",
        "_received",
        "_terminal",
    )

    def __init__(
        self,
        client: ClientStream,
        conn: Connection,
        capture: BodyCapture | StreamCapture,
        usage_filter: UsageChunkFilter | None,
        length: int | None,
        terminal: TerminalDetector | None,
    ) -> None:
        self._client = client
        self._terminal = terminal
        self._conn = conn
        self._capture = capture
        self._filter = usage_filter
        self._length = length
        self._received = 0
        self._held = b""

    def on_chunk(self, chunk: bytes) -> None:
        """One piece of vLLM's body, in the order received; never blocks."""
        out = self._filter.feed(chunk) if self._filter is not None else chunk
        if self._held:  # more bytes after what looked like the end: not the end
            held, self._held = self._held, b""
            self._emit(held)
        if out:
            if self._terminal is not None:  # the stream's terminal event (sse.terminal_detector)
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
        client = self._client
        client.write(data)
        if client.congested:
            self._conn.pause_reading()
            self._conn.wake()

    def end(self) -> bytes:
        """The bytes still held back once vLLM's body is complete."""
        held = self._held
        if self._filter is not None:
            held += self._filter.flush()
        self._held = b""
        return held
