"""Task protection's pure parts: the transition table, the planner, the agent's answers, settings.

The planner is a table: one row per situation (state, busy or idle for how
long, renewal due, max hold reached, cool-down, stopping) and the step the
driver must take. The answers are the shapes amazon-ecs-agent writes
(ecs-agent/tmds/handlers/taskprotection/v1/{handlers/handlers.go,types/types.go}).
"""

from __future__ import annotations

import json

import pytest

from sidecar_audit.config import Config, ConfigError
from sidecar_audit.task_protection import (
    Facts,
    IllegalTransition,
    Machine,
    State,
    Step,
    Timing,
    parse_answer,
    plan,
)

T = Timing(idle_s=60.0, renew_s=450.0, expiry_minutes=15, max_hold_s=3600.0)
NOW = 10_000.0
U, P = State.UNPROTECTED, State.PROTECTED


def facts(state: State = U, **changes: object) -> Facts:
    base = {
        "state": state,
        "now": NOW,
        "busy": False,
        "idle_since": None,
        "held_since": None,
        "renew_at": 0.0,
        "expires_at": 0.0,
        "retry_at": 0.0,
        "resting": False,
        "maybe_held": False,
        "stopping": False,
    }
    if state is P:
        base.update(held_since=NOW - 100, renew_at=NOW + 350, expires_at=NOW + 800)
    base.update(changes)
    return Facts(**base)  # type: ignore[arg-type]


PLAN_ROWS = [
    ("idle at start: nothing to do", facts(), (Step.WAIT, None)),
    ("a request arrives: protect", facts(busy=True), (Step.PROTECT, None)),
    (
        "idle within the quiet period, unprotected: protect",
        facts(idle_since=NOW - 5),
        (Step.PROTECT, None),
    ),
    (
        "busy in a cool-down: wait for its end",
        facts(busy=True, retry_at=NOW + 30),
        (Step.WAIT, NOW + 30),
    ),
    (
        "busy, protected, renewal not due: wake at renewal",
        facts(P, busy=True),
        (Step.WAIT, NOW + 350),
    ),
    ("busy, renewal due: renew", facts(P, busy=True, renew_at=NOW), (Step.PROTECT, None)),
    (
        "busy, renewal due but cooling down: wake at the retry",
        facts(P, busy=True, renew_at=NOW - 1, retry_at=NOW + 20),
        (Step.WAIT, NOW + 20),
    ),
    (
        "idle 10 s of 60: wake at the quiet period's end",
        facts(P, idle_since=NOW - 10),
        (Step.WAIT, NOW + 50),
    ),
    (
        "idle past the quiet period: unprotect",
        facts(P, idle_since=NOW - 60),
        (Step.UNPROTECT, None),
    ),
    (
        "idle past the quiet period, cooling down: wait",
        facts(P, idle_since=NOW - 61, retry_at=NOW + 5),
        (Step.WAIT, NOW + 5),
    ),
    ("our expiry passed: lapse", facts(P, busy=True, expires_at=NOW), (Step.LAPSE, None)),
    (
        "held for the max hold while busy: unprotect",
        facts(P, busy=True, held_since=NOW - 3600),
        (Step.UNPROTECT, None),
    ),
    (
        "resting after the max hold, busy: no protection",
        facts(busy=True, resting=True),
        (Step.WAIT, None),
    ),
    (
        "resting, idle 20 s: wake when the quiet period ends (resting ends then)",
        facts(idle_since=NOW - 20, resting=True),
        (Step.WAIT, NOW + 40),
    ),
    (
        "stopping while protected: unprotect",
        facts(P, busy=True, stopping=True),
        (Step.UNPROTECT, None),
    ),
    (
        "stopping after a protect call that never answered: unprotect",
        facts(maybe_held=True, stopping=True),
        (Step.UNPROTECT, None),
    ),
    ("stopping, nothing held: done", facts(busy=True, stopping=True), (Step.DONE, None)),
]


@pytest.mark.parametrize(("case", "given", "expected"), PLAN_ROWS, ids=[r[0] for r in PLAN_ROWS])
def test_plan(case: str, given: Facts, expected: tuple[Step, float | None]) -> None:
    assert plan(given, T) == expected, case


def test_no_limit_on_the_hold_when_max_hold_is_0() -> None:
    timing = Timing(60.0, 450.0, 15, 0.0)
    given = facts(P, busy=True, held_since=NOW - 10 * 3600)
    assert plan(given, timing) == (Step.WAIT, NOW + 350)


def test_planning_during_a_call_is_a_bug() -> None:
    with pytest.raises(IllegalTransition):
        plan(facts(State.PROTECTING, busy=True), T)


LEGAL = [
    (U, State.PROTECTING),
    (U, State.UNPROTECTING),
    (State.PROTECTING, P),
    (State.PROTECTING, U),
    (P, State.PROTECTING),
    (P, State.UNPROTECTING),
    (P, U),
    (State.UNPROTECTING, U),
    (State.UNPROTECTING, P),
]


def _machine_in(state: State, seen: list[State]) -> Machine:
    machine = Machine(seen.append)
    path = {
        U: [],
        State.PROTECTING: [State.PROTECTING],
        P: [State.PROTECTING, P],
        State.UNPROTECTING: [State.PROTECTING, P, State.UNPROTECTING],
    }[state]
    for step in path:
        machine.to(step)
    seen.clear()
    return machine


@pytest.mark.parametrize("source", list(State))
@pytest.mark.parametrize("target", list(State))
def test_transition_table(source: State, target: State) -> None:
    seen: list[State] = []
    machine = _machine_in(source, seen)
    if (source, target) in LEGAL:
        machine.to(target)
        assert (machine.state, seen) == (target, [target])
    else:
        with pytest.raises(IllegalTransition):
            machine.to(target)
        assert (machine.state, seen) == (source, [])


ARN = "arn:aws:ecs:eu-central-1:123456789012:task/central-llm-service-cluster/0123"


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


ANSWER_ROWS = [
    (
        "protected",
        200,
        {
            "protection": {
                "ExpirationDate": "2026-11-28T22:00:00.000Z",
                "ProtectionEnabled": True,
                "TaskArn": ARN,
            }
        },
        ("ok", True, False, None),
    ),
    (
        "unprotected",
        200,
        {"protection": {"ExpirationDate": None, "ProtectionEnabled": False, "TaskArn": ARN}},
        ("ok", True, False, None),
    ),
    (
        "standalone task: ECS failure TASK_NOT_VALID, permanent",
        200,
        {"failure": {"Arn": ARN, "Detail": None, "Reason": "TASK_NOT_VALID"}},
        ("failure", False, False, "TASK_NOT_VALID"),
    ),
    (
        "other ECS failure: retried",
        200,
        {"failure": {"Arn": ARN, "Reason": "SERVER_ERROR"}},
        ("failure", False, True, "SERVER_ERROR"),
    ),
    (
        "decode error: ours, not retried",
        400,
        {
            "error": {
                "Code": "InvalidParameterException",
                "Message": "UpdateTaskProtection: failed to decode request",
            }
        },
        ("client_error", False, False, "InvalidParameterException"),
    ),
    (
        "no task role credentials",
        403,
        {"error": {"Arn": ARN, "Code": "AccessDeniedException", "Message": "no task IAM role"}},
        ("client_error", False, False, "AccessDeniedException"),
    ),
    (
        "ECS throttling: retried",
        400,
        {
            "requestID": "r",
            "error": {"Arn": ARN, "Code": "ThrottlingException", "Message": "Rate exceeded"},
        },
        ("client_error", False, True, "ThrottlingException"),
    ),
    (
        "ECS timed out in the agent",
        504,
        {
            "error": {
                "Arn": ARN,
                "Code": "RequestCanceled",
                "Message": "Timed out calling ECS Task Protection API",
            }
        },
        ("server_error", False, True, "RequestCanceled"),
    ),
    ("not JSON from a proxy", 502, "<html>bad gateway</html>", ("malformed", False, True, None)),
]


@pytest.mark.parametrize(
    ("case", "status", "doc", "expected"), ANSWER_ROWS, ids=[r[0] for r in ANSWER_ROWS]
)
def test_parse_answer(case: str, status: int, doc: object, expected: tuple[object, ...]) -> None:
    body = doc.encode() if isinstance(doc, str) else _body(doc)
    answer = parse_answer(status, body)
    assert (answer.result, answer.ok, answer.retryable, answer.code) == expected, case
    assert answer.status == status


AGENT_URI = "http://169.254.170.2/api/0123456789abcdef-1234567890"


def test_settings_defaults_and_derived_values() -> None:
    local = Config.from_env({})
    assert (local.task_protection, local.protects_task) == (True, False)
    on = Config.from_env({"ECS_AGENT_URI": AGENT_URI + "/"})
    assert on.ecs_agent_uri == AGENT_URI and on.protects_task
    assert on.protection_renew_s() == 15 * 30.0  # half of the 15-minute expiry
    assert (
        Config.from_env({"ECS_AGENT_URI": AGENT_URI, "TASK_PROTECTION": "false"}).protects_task
        is False
    )
    # Off, nothing about protection is checked (WORKERS=2 runs locally without an agent).
    assert Config.from_env({"WORKERS": "2"}).workers == 2


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ECS_AGENT_URI": "169.254.170.2/api/x"}, "ECS_AGENT_URI="),
        ({"ECS_AGENT_URI": "http://169.254.170.2/api/x?y=1"}, "ECS_AGENT_URI="),
        ({"TASK_PROTECTION_MINUTES": "0"}, "TASK_PROTECTION_MINUTES="),
        ({"TASK_PROTECTION_MINUTES": "2881"}, "TASK_PROTECTION_MINUTES="),
        ({"TASK_PROTECTION_IDLE_S": "0"}, "TASK_PROTECTION_IDLE_S="),
        ({"TASK_PROTECTION_MAX_HOLD_S": "-1"}, "TASK_PROTECTION_MAX_HOLD_S="),
        ({"ECS_AGENT_URI": AGENT_URI, "WORKERS": "2"}, "WORKERS=2"),
        (
            {
                "ECS_AGENT_URI": AGENT_URI,
                "TASK_PROTECTION_MINUTES": "1",
                "TASK_PROTECTION_RENEW_S": "60",
            },
            "TASK_PROTECTION_RENEW_S=60",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("?", r"\?")):
        Config.from_env(env)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"protection":' * 50_000])
def test_a_deeply_nested_answer_is_malformed_not_a_crash(body: bytes) -> None:
    # json.loads raises RecursionError (not a ValueError) on deep nesting: it once
    # escaped `AgentClient.put` and ended the driver, protection left as it was.
    answer = parse_answer(200, body)
    assert (answer.ok, answer.result) == (False, "malformed")
