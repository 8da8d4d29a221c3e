"""The load generator process: closed-loop HTTP/1.1 clients on raw asyncio transports.

`python -m bench.loadgen WORKLOAD.json RESULT.json` runs the workers the
workload names, each on its own keep-alive connection: send a request, read
the response to its last byte, send the next, until the window closes (see
`workload.py` for the timing rules). It is built to cost little per event so it
is not the bottleneck: uvloop when available, one `asyncio.Protocol` per
connection, bytes handed straight to `TimedResponse` (llhttp's framing, the
sidecar's own response reader; it counts and keeps no body), one clock read per
socket read, no HTTP client library.

Invariants: a connection carries one request at a time; any error (refused,
reset, timeout, bad framing, a response ending early) counts once under its kind
and closes that connection, and the worker reconnects; a non-200 status is a
complete response counted as error `status_<code>`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import cast

from bench.timed_response import MalformedResponse, TimedResponse
from bench.workload import GeneratorResult, Workload


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request()` resolves with the finished response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: TimedResponse | None = None
        self.waiter: asyncio.Future[TimedResponse] | None = None
        self.closed = False
        self.on_read: _Tally | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        response, waiter = self.response, self.waiter
        if response is None or waiter is None or waiter.done():
            self._fail(MalformedResponse("bytes outside a request"))
            return
        before = response.events
        try:
            finished = response.feed(data, now)
        except Exception as exc:  # MalformedResponse; a defect reaches the worker (generator_bug_*)
            self._fail(exc)
            return
        if self.on_read is not None:
            self.on_read.read(now, response.events - before, len(data))
        if finished:
            self.response = None
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response, waiter = self.response, self.waiter
        if response is None or waiter is None or waiter.done():
            return
        if response.eof(time.monotonic()):
            self.response = None
            waiter.set_result(response)
        else:
            waiter.set_exception(ConnectionResetError("connection closed mid-response"))

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def request(self, payload: bytes, response: TimedResponse) -> asyncio.Future[TimedResponse]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.response = response
        self.waiter = loop.create_future()
        self.transport.write(payload)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        response, self.response = self.response, None
        if response is not None:  # given up mid-response (error, timeout): free its parser now
            response.close()
        if self.transport is not None:
            self.transport.close()


class _Tally:
    """Counts what falls inside the measurement window."""

    __slots__ = ("result", "window_from", "window_until")

    def __init__(self, workload: Workload, result: GeneratorResult) -> None:
        self.window_from = workload.window_from
        self.window_until = workload.window_until
        self.result = result

    def inside(self, t: float) -> bool:
        return self.window_from <= t < self.window_until

    def read(self, now: float, events: int, size: int) -> None:
        if self.window_from <= now < self.window_until:
            self.result.events += events
            self.result.body_bytes += size

    def finished(self, started: float, response: TimedResponse) -> None:
        result = self.result
        if response.status != 200:
            result.error(f"status_{response.status}")
        assert response.finished_at is not None
        if self.inside(response.finished_at):
            result.completed += 1
            result.latency_s.append(response.finished_at - started)
        if response.first_content_at is not None and self.inside(response.first_content_at):
            result.ttft_s.append(response.first_content_at - started)


def _request_head(workload: Workload) -> bytes:
    """Everything before the request id, which is the last header."""
    body = workload.body.encode()
    lines = [
        f"POST {workload.path} HTTP/1.1",
        f"Host: {workload.host}:{workload.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in workload.headers),
        "X-Request-Id: ",
    ]
    return "\r\n".join(lines).encode()


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _worker(index: int, workload: Workload, tally: _Tally) -> None:
    result = tally.result
    loop = asyncio.get_running_loop()
    head = _request_head(workload)
    tail = b"\r\n\r\n" + workload.body.encode()
    await _sleep_until(
        workload.start_at + workload.stagger_s * index / max(workload.total_workers, 1)
    )
    conn: _Connection | None = None
    sequence = 0
    while time.monotonic() < workload.window_until:
        if conn is None or conn.closed:
            try:
                _, conn = await loop.create_connection(_Connection, workload.host, workload.port)
            except OSError as exc:
                result.error(f"connect_{type(exc).__name__}")
                conn = None
                await asyncio.sleep(0.1)
                continue
            conn.on_read = tally
        sequence += 1
        request_id = f"{workload.id_prefix}-w{index}-{sequence}"
        response = TimedResponse()
        started = time.monotonic()
        result.requests_started += 1
        try:
            async with asyncio.timeout(workload.request_timeout_s):
                await conn.request(head + request_id.encode() + tail, response)
        except (OSError, MalformedResponse, TimeoutError) as exc:
            result.error(type(exc).__name__)
            conn.close()
        else:
            tally.finished(started, response)
            if not response.keep_alive:
                conn.close()
        if response.status:
            result.responded_ids.append(request_id)
    if conn is not None:
        conn.close()


async def generate(workload: Workload) -> GeneratorResult:
    """Run every worker of `workload`; returns when all have finished or the drain ran out."""
    result = GeneratorResult()
    tally = _Tally(workload, result)
    tasks = [asyncio.create_task(_worker(i, workload, tally)) for i in workload.workers]
    deadline = workload.window_until + workload.drain_s
    _, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0))
    for task in pending:
        task.cancel()
    result.unfinished = len(pending)
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):  # a bug in the generator: make it loud
            result.error(f"generator_bug_{type(outcome).__name__}")
    return result


def _run(workload: Workload) -> GeneratorResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(generate(workload))
    return uvloop.run(generate(workload))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.loadgen WORKLOAD.json RESULT.json", file=sys.stderr)
        return 2
    result = _run(Workload.load(Path(args[0])))
    result.dump(Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
