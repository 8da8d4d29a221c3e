"""Pacing a generation: when each event goes out, and the scenarios that break the pace.

Timeline of a stream (vLLM's): headers at once; after the time to first token the
opening events (chat role chunks) and the first step of every choice; then one step
of every choice per inter-token interval, interleaved by choice index; then the usage
event if asked and the encoder's `done` event (`data: [DONE]`; Messages and Responses
streams have none). A non-streamed answer is sent once the same timeline has elapsed.
`error_midstream` and `stall_midstream` cut the timeline after `error_after` steps
(always before the finishing step); an encoder whose API sends no error event
(`error_events` returns None: vLLM's Responses stream) ends the stream with
`StreamCut`, and the connection is closed without the chunked terminator.

Keep-alive (vLLM's `--sse-keep-alive-interval`, `serve/utils/sse_keep_alive.py`): when
`keep_alive_s` > 0, a `: keep-alive` comment goes out whenever the stream has been idle
that long since its start or its last write (the wait for the first token included).

Hot path: a stream is driven by event-loop timer callbacks (`loop.call_at`), not by a
sleeping task, so an event costs one timer, one encode and one transport write — no
task wake-up and no resumption of the handler's await chain. Ticks are scheduled on
absolute deadlines, so the pace does not drift. The handler task only waits for the
end, for back-pressure (`drain`) and for its own cancellation (client gone), which
cancels the pending timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vllm_standin.chat_wire import KEEPALIVE_COMMENT
from vllm_standin.errors import GENERATION_ERROR
from vllm_standin.plan import ChoicePlan
from vllm_standin.respond import SseOut, StreamCut
from vllm_standin.scenarios import Controls


class StreamEncoder(Protocol):
    """One API's stream bytes: `preamble` at once (before the first token), `opening`
    with the first engine output, `event` per choice and step — one event, or a list
    when one engine step becomes several (Messages: a block's stop, the next block's
    start), `closing` after the last step, then `done` if the API has one."""

    @property
    def done(self) -> bytes | None: ...

    def preamble(self) -> list[bytes]: ...

    def opening(self) -> list[bytes]: ...

    def event(self, plan: ChoicePlan, position: int) -> bytes | list[bytes]: ...

    def closing(self, plans: Sequence[ChoicePlan]) -> list[bytes]: ...

    def error_events(self, message: str, err_type: str, code: int) -> list[bytes] | None: ...


@dataclass(frozen=True, slots=True)
class Pace:
    ttft_s: float
    itl_s: float

    @classmethod
    def of(cls, controls: Controls, ttft_ms: float, itl_ms: float) -> Pace:
        ttft = controls.ttft_ms if controls.ttft_ms is not None else ttft_ms
        itl = controls.itl_ms if controls.itl_ms is not None else itl_ms
        return cls(ttft / 1000.0, itl / 1000.0)

    def total_s(self, steps: int) -> float:
        return self.ttft_s + self.itl_s * max(steps - 1, 0)


async def forever() -> None:
    """Wait until cancelled (the client's disconnect cancels the handler)."""
    await asyncio.Event().wait()


def _steps(plans: Sequence[ChoicePlan]) -> int:
    return max((len(plan.steps) for plan in plans), default=0)


def _cut(controls: Controls, steps: int) -> int | None:
    """The step at which a mid-stream scenario interrupts, if any."""
    if controls.has("error_midstream") or controls.has("stall_midstream"):
        return min(controls.error_after, max(steps - 1, 0))
    return None


_FINISHED = "finished"
_DRAIN = "drain"


class PacedStream:
    """Writes one stream's events from timer callbacks; `run()` waits for the end."""

    __slots__ = (
        "_comments",
        "_cut",
        "_due",
        "_encoder",
        "_handle",
        "_idle",
        "_itl",
        "_keep_alive",
        "_loop",
        "_out",
        "_plans",
        "_position",
        "_signal",
        "_stall",
        "_steps",
        "_ttft",
    )

    def __init__(
        self,
        out: SseOut,
        encoder: StreamEncoder,
        plans: Sequence[ChoicePlan],
        pace: Pace,
        controls: Controls,
        keep_alive_s: float = 0.0,
    ) -> None:
        self._out = out
        self._encoder = encoder
        self._plans = plans
        self._steps = _steps(plans)
        self._cut = _cut(controls, self._steps)
        self._stall = controls.has("stall_midstream")
        self._comments = controls.has("keepalive_comments")
        self._itl = pace.itl_s
        self._ttft = pace.ttft_s
        self._loop = asyncio.get_running_loop()
        self._signal: asyncio.Future[str] = self._loop.create_future()
        self._handle: asyncio.TimerHandle | None = None
        self._position = 0
        self._due = 0.0
        self._keep_alive = keep_alive_s
        self._idle: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Emit the whole stream; raises ConnectionResetError if the client vanished."""
        loop = self._loop
        for event in self._encoder.preamble():  # Responses: created, in_progress at once
            self._out.data(event)
        self._due = loop.time() + self._ttft
        self._handle = loop.call_at(self._due, self._tick)
        self._arm_keep_alive()
        try:
            while await self._signal == _DRAIN:
                await self._out.drain()
                self._signal = loop.create_future()
                self._due = max(self._due, loop.time())
                self._handle = loop.call_at(self._due, self._tick)
        finally:
            if self._handle is not None:
                self._handle.cancel()
            if self._idle is not None:
                self._idle.cancel()

    def _arm_keep_alive(self) -> None:
        """(Re)start the idle clock: a comment is due `keep_alive` s after the last write."""
        if self._keep_alive <= 0:
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._loop.call_later(self._keep_alive, self._keep_alive_tick)

    def _keep_alive_tick(self) -> None:
        self._idle = None
        if self._signal.done():
            return
        try:
            self._out.comment(KEEPALIVE_COMMENT)
        except ConnectionResetError as exc:
            self._signal.set_exception(exc)
            return
        self._arm_keep_alive()

    def _tick(self) -> None:
        self._handle = None
        if self._signal.done():
            return  # the handler is gone (cancelled); nothing may be written any more
        try:
            more = self._emit()
        except ConnectionError as exc:
            self._signal.set_exception(exc)
            return
        self._arm_keep_alive()
        if more is None:
            return  # stalled on purpose: nothing more is ever sent
        if not more:
            self._signal.set_result(_FINISHED)
            return
        self._due += self._itl
        if self._out.congested():
            self._signal.set_result(_DRAIN)
        else:
            self._handle = self._loop.call_at(self._due, self._tick)

    def _emit(self) -> bool | None:
        """Write the events of the current position; False when done, None when stalled."""
        out, position, encoder = self._out, self._position, self._encoder
        if position == self._cut:
            if self._stall:
                return None
            failure = encoder.error_events(*GENERATION_ERROR)
            if failure is None:
                raise StreamCut("the server drops the connection (no error event)")
            self._write_all(failure)
            return False
        if position == 0:
            for event in encoder.opening():
                out.data(event)
        elif self._comments:
            out.comment(KEEPALIVE_COMMENT)
        encode = encoder.event
        for plan in self._plans:
            if position < len(plan.steps):
                encoded = encode(plan, position)
                if isinstance(encoded, list):
                    for piece in encoded:
                        out.data(piece)
                else:
                    out.data(encoded)
        self._position = position = position + 1
        if position < self._steps:
            return True
        for closing in encoder.closing(self._plans):
            out.data(closing)
        if encoder.done is not None:
            out.data(encoder.done)
        return False

    def _write_all(self, events: list[bytes]) -> None:
        for event in events:
            self._out.data(event)
        if self._encoder.done is not None:
            self._out.data(self._encoder.done)


async def stream_events(
    out: SseOut,
    encoder: StreamEncoder,
    plans: Sequence[ChoicePlan],
    pace: Pace,
    controls: Controls,
    keep_alive_s: float = 0.0,
) -> None:
    """Write a whole stream to `out` on `pace`, honouring the mid-stream scenarios."""
    await PacedStream(out, encoder, plans, pace, controls, keep_alive_s).run()


async def await_full(plans: Sequence[ChoicePlan], pace: Pace, controls: Controls) -> bool:
    """Wait as long as the stream would take; False when the generation "failed"."""
    steps = _steps(plans)
    cut = _cut(controls, steps)
    await asyncio.sleep(pace.total_s(steps if cut is None else cut))
    if cut is None:
        return True
    if controls.has("stall_midstream"):
        await forever()
    return False
