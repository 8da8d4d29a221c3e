"""ECS task scale-in protection while the sidecar serves: asked for off the request path.

ECS never stops a protected task for a service scale-in or a deployment. The
ECS agent puts `ECS_AGENT_URI` in every container; `PUT
${ECS_AGENT_URI}/task-protection/v1/state` with `{"ProtectionEnabled": true,
"ExpiresInMinutes": N}` protects the task for N minutes (1-2880; each call
restarts the clock), `{"ProtectionEnabled": false}` removes it. The agent
calls ECS's UpdateTaskProtection with the task role's credentials (wire
shapes: amazon-ecs-agent `ecs-agent/tmds/handlers/taskprotection/v1/handlers/handlers.go`
and `.../v1/types/types.go`, summed up in docs/observability.md).

Invariants:

- The request path only calls `busy()` and `idle()`: integer arithmetic and,
  on a change between idle and busy, `Event.set()`. Never an await, never an
  exception, never a delay for a client.
- One driver task makes every agent call, one at a time. Protection is wanted
  while a request is in flight and for the quiet period (`TASK_PROTECTION_IDLE_S`)
  after the last one ended. Calls: one to protect when it becomes wanted, one
  renewal every `TASK_PROTECTION_RENEW_S` while wanted, one to remove it when
  it is no longer wanted. So the number of calls depends on time and on
  quiet periods, never on the request rate.
- Continuous protection ends after `TASK_PROTECTION_MAX_HOLD_S` even when busy
  (steady load must not block scale-in for ever); it is asked again only after
  the task was idle for a quiet period.
- A step that fails is tried up to `ATTEMPTS` times with backoff, then not
  before a cool-down (30 s, doubling up to 5 min). Failures are logged (status,
  error code, failure reason: never the task ARN or the agent's message) and
  counted in `llm_sidecar_task_protection_calls_total{result!="ok"}`.
  A `failure` answer with reason `TASK_NOT_VALID` (a task outside a service)
  turns protection off for the process.
- `begin_stop()` (SIGTERM): protection is never asked again; the driver removes
  what it holds (or may hold: a protect call whose answer never came) and ends.

States (`Machine`; any other transition raises `IllegalTransition`):

| from | to | when |
| --- | --- | --- |
| UNPROTECTED | PROTECTING | protection becomes wanted |
| UNPROTECTED | UNPROTECTING | stopping, after a protect call whose outcome is unknown |
| PROTECTING | PROTECTED | the agent confirmed; or a renewal failed (the old expiry holds) |
| PROTECTING | UNPROTECTED | a first protect failed |
| PROTECTED | PROTECTING | renewal due |
| PROTECTED | UNPROTECTING | not wanted any more (quiet period over, max hold, stopping) |
| PROTECTED | UNPROTECTED | our own record of the expiry passed (renewals failed) |
| UNPROTECTING | UNPROTECTED | the agent confirmed |
| UNPROTECTING | PROTECTED | removal failed (protection lapses at its expiry anyway) |
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from .backoff import exponential
from .config import Config

log = logging.getLogger("sidecar_audit.task_protection")

STATE_PATH = "/task-protection/v1/state"
ATTEMPTS = 3
BACKOFF_S = (0.5, 1.0)  # before the 2nd and 3rd attempt
CALL_TIMEOUT_S = 6.0  # the agent gives ECS 4 s, then answers 504 itself
COOL_DOWN_S = 30.0
MAX_COOL_DOWN_S = 300.0
# At exit: a protect call still in flight, then every removal attempt and its backoff.
STOP_WAIT_S = CALL_TIMEOUT_S * (ATTEMPTS + 1) + sum(BACKOFF_S)
MAX_ANSWER_BYTES = 64 * 1024  # the agent's answers are a few hundred bytes


class State(enum.Enum):
    UNPROTECTED = "unprotected"
    PROTECTING = "protecting"
    PROTECTED = "protected"
    UNPROTECTING = "unprotecting"


class IllegalTransition(RuntimeError):
    """A transition the table in the module docstring does not allow (a bug, not an input)."""


_ALLOWED: dict[State, frozenset[State]] = {
    State.UNPROTECTED: frozenset({State.PROTECTING, State.UNPROTECTING}),
    State.PROTECTING: frozenset({State.PROTECTED, State.UNPROTECTED}),
    State.PROTECTED: frozenset({State.PROTECTING, State.UNPROTECTING, State.UNPROTECTED}),
    State.UNPROTECTING: frozenset({State.UNPROTECTED, State.PROTECTED}),
}


class Machine:
    """The protection state as this process believes it; transitions checked."""

    def __init__(self, on_change: Callable[[State], None] = lambda _state: None) -> None:
        self.state = State.UNPROTECTED
        self._on_change = on_change

    def to(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {new.value}")
        self.state = new
        self._on_change(new)


class Step(enum.Enum):
    PROTECT = "protect"  # first protection or a renewal
    UNPROTECT = "unprotect"
    LAPSE = "lapse"  # our record of the expiry passed: note it, no call
    WAIT = "wait"
    DONE = "done"


@dataclass(frozen=True)
class Timing:
    idle_s: float  # quiet period
    renew_s: float
    expiry_minutes: int  # ExpiresInMinutes of every protect call
    max_hold_s: float  # 0: no limit

    @property
    def expiry_s(self) -> float:
        return self.expiry_minutes * 60.0


@dataclass(frozen=True)
class Facts:
    """What the planner decides from (monotonic seconds)."""

    state: State
    now: float
    busy: bool
    idle_since: float | None  # None while busy
    held_since: float | None  # start of the current continuous protection
    renew_at: float
    expires_at: float
    retry_at: float  # no call before this (cool-down after a failed step)
    resting: bool  # max hold reached: not again before a quiet period
    maybe_held: bool  # a protect call's outcome is unknown
    stopping: bool


def wanted(f: Facts, t: Timing) -> bool:
    """Busy, or idle for less than the quiet period."""
    return f.busy or (f.idle_since is not None and f.now < f.idle_since + t.idle_s)


def plan(f: Facts, t: Timing) -> tuple[Step, float | None]:
    """The driver's next step and, for WAIT, when to look again (None: at the next change)."""
    if f.stopping:
        if f.state is State.PROTECTED or (f.state is State.UNPROTECTED and f.maybe_held):
            return Step.UNPROTECT, None
        return Step.DONE, None
    if f.state is State.UNPROTECTED:
        if f.resting and f.idle_since is not None and f.now < f.idle_since + t.idle_s:
            return Step.WAIT, f.idle_since + t.idle_s  # then `resting` ends (TaskProtection)
        if not wanted(f, t) or f.resting:
            return Step.WAIT, None
        if f.now >= f.retry_at:
            return Step.PROTECT, None
        return Step.WAIT, f.retry_at
    if f.state is not State.PROTECTED:
        raise IllegalTransition(f"planning from {f.state.value}: a call is still running")
    if f.now >= f.expires_at:
        return Step.LAPSE, None
    held_out = (
        t.max_hold_s > 0 and f.held_since is not None and f.now >= f.held_since + t.max_hold_s
    )
    want = wanted(f, t) and not held_out
    due = f.now >= f.renew_at if want else True
    if due and f.now >= f.retry_at:
        return (Step.PROTECT if want else Step.UNPROTECT), None
    wakes = [f.expires_at, f.retry_at if due else f.renew_at]
    if f.idle_since is not None:
        wakes.append(f.idle_since + t.idle_s)
    if t.max_hold_s > 0 and f.held_since is not None:
        wakes.append(f.held_since + t.max_hold_s)
    return Step.WAIT, min(w for w in wakes if w > f.now)


# --- the agent's answers -----------------------------------------------------------------

RETRYABLE_CODES = frozenset({"ThrottlingException", "LimitExceededException", "ServerException"})
PERMANENT_FAILURES = frozenset({"TASK_NOT_VALID"})


@dataclass(frozen=True)
class Answer:
    """One agent answer, reduced to what the driver and the logs need."""

    ok: bool
    result: str  # metric label: ok, failure, client_error, server_error, unreachable, malformed
    retryable: bool
    status: int | None = None
    code: str | None = None  # the agent's error Code or failure Reason (bounded, logged)


def _short(value: object) -> str | None:
    return value[:64] if isinstance(value, str) else None


def parse_answer(status: int, body: bytes) -> Answer:
    """The agent's JSON: `{"protection": …}` (200), `{"failure": …}` (200), `{"error": …}`."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # deep nesting is a RecursionError, not a ValueError
        doc = None
    if not isinstance(doc, dict):
        return Answer(False, "malformed", status >= 500, status)
    protection, failure, error = doc.get("protection"), doc.get("failure"), doc.get("error")
    if status == 200 and isinstance(protection, dict):
        return Answer(True, "ok", False, status)
    if status == 200 and isinstance(failure, dict):
        reason = _short(failure.get("Reason"))
        return Answer(False, "failure", reason not in PERMANENT_FAILURES, status, reason)
    code = _short(error.get("Code")) if isinstance(error, dict) else None
    if status >= 500:
        return Answer(False, "server_error", True, status, code)
    if 400 <= status < 500:
        return Answer(False, "client_error", code in RETRYABLE_CODES, status, code)
    return Answer(False, "malformed", False, status, code)


class AgentClient:
    """PUT to the agent's task-protection endpoint; every failure becomes an `Answer`."""

    def __init__(self, session: aiohttp.ClientSession, agent_uri: str) -> None:
        self._session = session
        self._url = agent_uri + STATE_PATH

    async def put(self, body: dict[str, object]) -> Answer:
        try:
            async with self._session.put(
                self._url,
                json=body,
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
                # The agent never redirects; followed, a 303 turns the PUT into a GET of
                # the state, whose `{"protection": …}` would read as a confirmation.
                allow_redirects=False,
            ) as response:
                answer = bytearray()
                async for piece in response.content.iter_any():
                    answer += piece
                    if len(answer) > MAX_ANSWER_BYTES:  # never buffer an unbounded answer
                        return Answer(False, "malformed", response.status >= 500, response.status)
                return parse_answer(response.status, bytes(answer))
        except (aiohttp.ClientError, TimeoutError, OSError):
            return Answer(False, "unreachable", True)


# --- the driver ----------------------------------------------------------------------------


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "llm_sidecar_task_protection_calls",
            "Calls to the ECS agent's task-protection endpoint by operation and result "
            "(ok, failure, client_error, server_error, unreachable, malformed).",
            ("operation", "result"),
            registry=registry,
        )
        self.protected = Gauge(
            "llm_sidecar_task_protected",
            "1 while the ECS agent has confirmed scale-in protection of this task.",
            registry=registry,
        )


class TaskProtection:
    """Feeds busy/idle changes to one driver task that keeps the task protected while busy."""

    def __init__(
        self,
        agent: AgentClient | None,
        timing: Timing,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent  # None: off (no ECS_AGENT_URI, or TASK_PROTECTION=false)
        self._timing = timing
        self._clock = clock
        self._metrics = _Metrics(registry)
        self._machine = Machine(self._on_state)
        self._changed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle_since: float | None = None
        self._facts = Facts(
            state=State.UNPROTECTED,
            now=0.0,
            busy=False,
            idle_since=None,
            held_since=None,
            renew_at=0.0,
            expires_at=0.0,
            retry_at=0.0,
            resting=False,
            maybe_held=False,
            stopping=False,
        )
        self._failed_rounds = 0

    @property
    def state(self) -> State:
        return self._machine.state

    # The request path: O(1), no await, no exception.
    def busy(self) -> None:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle_since = None
            self._changed.set()

    def idle(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle_since = self._clock()
            self._changed.set()

    # Lifecycle.
    def start(self) -> None:
        if self._agent is not None and self._driver is None:
            self._driver = asyncio.create_task(self._drive(), name="task-protection")

    def begin_stop(self) -> None:
        """SIGTERM: never protect again; the driver removes protection and ends."""
        self._facts = replace(self._facts, stopping=True)
        self._changed.set()

    async def close(self) -> None:
        """Wait (bounded) for the driver to finish its last removal, then end it."""
        self.begin_stop()
        if self._driver is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._driver), STOP_WAIT_S)
        except TimeoutError:
            log.warning("task protection: removal still running at exit")
        finally:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    # The driver.
    def _observe(self) -> Facts:
        f = replace(
            self._facts,
            state=self._machine.state,
            now=self._clock(),
            busy=self._in_flight > 0,
            idle_since=self._idle_since,
        )
        if not wanted(f, self._timing) and f.resting:
            f = replace(f, resting=False)  # a quiet period passed after the max hold
        self._facts = f
        return f

    async def _drive(self) -> None:
        try:
            while True:
                self._changed.clear()
                facts = self._observe()
                step, wake = plan(facts, self._timing)
                if step is Step.DONE:
                    return
                if step is Step.WAIT:
                    timeout = None if wake is None else max(wake - facts.now, 0.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout)
                    continue
                if step is Step.LAPSE:
                    log.warning("task protection: expired before a renewal succeeded")
                    self._machine.to(State.UNPROTECTED)
                    self._facts = replace(self._facts, held_since=None)
                    continue
                if not await self._call(step is Step.PROTECT):
                    return
        except Exception:  # a bug here must never take the sidecar down
            log.exception("task protection: driver failed; protection off for this process")

    async def _call(self, protect: bool) -> bool:
        """One step with its retries; False when protection must stay off for the process."""
        assert self._agent is not None
        timing = self._timing
        before = self._machine.state
        self._machine.to(State.PROTECTING if protect else State.UNPROTECTING)
        body: dict[str, object] = {"ProtectionEnabled": protect}
        if protect:
            body["ExpiresInMinutes"] = timing.expiry_minutes
        operation = "protect" if protect else "unprotect"
        answer = Answer(False, "unreachable", True)
        unanswered = False  # an attempt whose outcome the agent never told us
        for attempt in range(1, ATTEMPTS + 1):
            sent = self._clock()
            if protect:
                self._facts = replace(self._facts, maybe_held=True)
            answer = await self._agent.put(body)
            unanswered = unanswered or answer.result == "unreachable"
            self._metrics.calls.labels(operation, answer.result).inc()
            if answer.ok:
                self._succeeded(protect, before, sent)
                return True
            log.warning(
                "task protection call failed",
                extra={
                    "operation": operation,
                    "result": answer.result,
                    "status": answer.status,
                    "code": answer.code,
                    "attempt": attempt,
                },
            )
            if not answer.retryable or attempt == ATTEMPTS or (protect and self._facts.stopping):
                break
            await asyncio.sleep(BACKOFF_S[attempt - 1])
        return self._failed(protect, before, answer, unanswered)

    def _succeeded(self, protect: bool, before: State, sent: float) -> None:
        timing = self._timing
        self._failed_rounds = 0
        if protect:
            self._machine.to(State.PROTECTED)
            held_since = self._facts.held_since if before is State.PROTECTED else sent
            self._facts = replace(
                self._facts,
                held_since=held_since,
                renew_at=sent + timing.renew_s,
                expires_at=sent + timing.expiry_s,
                retry_at=0.0,
                maybe_held=True,
            )
            if before is State.UNPROTECTED:
                log.info("task protected", extra={"expiresInMinutes": timing.expiry_minutes})
            return
        self._machine.to(State.UNPROTECTED)
        held_out = (
            timing.max_hold_s > 0
            and self._facts.held_since is not None
            and sent >= self._facts.held_since + timing.max_hold_s
        )
        self._facts = replace(
            self._facts,
            held_since=None,
            retry_at=0.0,
            maybe_held=False,
            resting=self._facts.resting or (held_out and not self._facts.stopping),
        )
        log.info("task protection removed", extra={"maxHoldReached": held_out})

    def _failed(self, protect: bool, before: State, answer: Answer, unanswered: bool) -> bool:
        self._failed_rounds += 1
        cool_down = exponential(self._failed_rounds, COOL_DOWN_S, MAX_COOL_DOWN_S)
        self._facts = replace(self._facts, retry_at=self._clock() + cool_down)
        if protect:
            # A renewal that failed leaves the old expiry in force; a first protect leaves none
            # (unless its answer never came: `maybe_held` stays set for the stop).
            self._machine.to(State.PROTECTED if before is State.PROTECTED else State.UNPROTECTED)
            if not unanswered and before is not State.PROTECTED:
                self._facts = replace(self._facts, maybe_held=False)
        else:
            self._machine.to(State.PROTECTED if before is State.PROTECTED else State.UNPROTECTED)
            if self._facts.stopping:
                return False  # given up at stop: the expiry ends the protection
        if answer.result == "failure" and not answer.retryable:
            log.error(
                "task protection refused by ECS; off for this process",
                extra={"code": answer.code},
            )
            return False
        return True

    def _on_state(self, state: State) -> None:
        if state is State.PROTECTED:
            self._metrics.protected.set(1)
        elif state is State.UNPROTECTED:
            self._metrics.protected.set(0)


@contextlib.asynccontextmanager
async def task_protection(
    config: Config, registry: CollectorRegistry
) -> AsyncIterator[TaskProtection]:
    """The app's `TaskProtection`, its driver started when protection is on; closed on exit."""
    timing = Timing(
        idle_s=config.task_protection_idle,
        renew_s=config.protection_renew_s(),
        expiry_minutes=config.task_protection_minutes,
        max_hold_s=config.task_protection_max_hold,
    )
    if not config.protects_task:
        reason = "TASK_PROTECTION=false" if config.ecs_agent_uri else "no ECS_AGENT_URI"
        log.info("task protection off", extra={"reason": reason})
        yield TaskProtection(None, timing, registry)
        return
    # Its own small client: the agent is on the host's link-local address, never vLLM.
    connector = aiohttp.TCPConnector(limit=2)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        protection = TaskProtection(AgentClient(session, config.ecs_agent_uri), timing, registry)
        protection.start()
        log.info(
            "task protection on",
            extra={
                "idleS": timing.idle_s,
                "renewS": timing.renew_s,
                "expiresInMinutes": timing.expiry_minutes,
                "maxHoldS": timing.max_hold_s,
            },
        )
        try:
            yield protection
        finally:
            await protection.close()
