"""Task scale-in protection end to end: the real sidecar process, the ECS agent's stand-in.

The agent cannot run here; `tests/ecs_agent_standin.py` serves its task-protection
endpoint as the agent's source does and journals every call. The sidecar finds it
through `ECS_AGENT_URI`, as on ECS. Every test reads what the agent was asked (the
journal) and what an operator sees (/metrics, the log); none asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.faults.load import call, chat_body, new_id, run_load
from tests.faults.observe import log_objects, logged, scrape, wait_for
from tests.procs import Proc, free_port, python_module, wait_http
from tests.sidecar_fixture import StartSidecar
from tests.standin_fixture import Standin

REPO = Path(__file__).resolve().parents[2]
CALLS = "llm_sidecar_task_protection_calls_total"
PROTECTED = "llm_sidecar_task_protected"
LONG_STREAM = {"x-standin-itl-ms": "100", "x-standin-tokens": "40"}  # ~4 s of tokens


@dataclass
class Agent:
    url: str
    container_id: str
    proc: Proc

    @property
    def uri(self) -> str:
        """What the ECS agent would put in ECS_AGENT_URI."""
        return f"{self.url}/api/{self.container_id}"

    def journal(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/journal", timeout=10) as response:
            calls: list[dict[str, Any]] = json.loads(response.read())
        return calls

    def puts(self) -> list[dict[str, Any]]:
        """The PUT bodies the agent received, each with the status it answered."""
        return [
            {**json.loads(c["body"]), "status": c["status"]}
            for c in self.journal()
            if c["method"] == "PUT"
        ]

    def control(self, **settings: object) -> None:
        request = urllib.request.Request(
            f"{self.url}/control", data=json.dumps(settings).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def protection(self) -> dict[str, Any]:
        """GET, as an operator would through the agent."""
        url = f"{self.uri}/task-protection/v1/state"
        with urllib.request.urlopen(url, timeout=10) as response:
            state: dict[str, Any] = json.loads(response.read())["protection"]
        return state


@pytest.fixture
def agent(proc_log_dir: Path) -> Iterator[Agent]:
    port = free_port()
    proc = Proc(
        f"ecs-agent-{port}",
        python_module("tests.ecs_agent_standin", "--port", str(port)),
        log_dir=proc_log_dir,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/journal", proc)
        yield Agent(url, "0123456789abcdef-1234567890", proc)
    finally:
        proc.stop()


def _protects(puts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in puts if p["ProtectionEnabled"] is True]


async def _stream(session: aiohttp.ClientSession, url: str, prefix: str) -> int | None:
    answer = await call(session, url, new_id(prefix), stream=True, headers=LONG_STREAM)
    return answer.status


async def test_a_stream_in_flight_protects_the_task_and_the_quiet_period_ends_it(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    sidecar = start_sidecar(
        standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION_IDLE_S="1"
    )
    assert agent.puts() == [], "idle at start: no call"
    async with aiohttp.ClientSession() as session:
        stream = asyncio.create_task(_stream(session, sidecar.url, "tp-stream"))
        puts = await asyncio.to_thread(wait_for, agent.puts, bool, "a protect call")
        assert not stream.done(), "protection must come while the stream runs"
        assert puts == [{"ProtectionEnabled": True, "ExpiresInMinutes": 15, "status": 200}]
        assert agent.protection()["ProtectionEnabled"] is True
        gauge = await asyncio.to_thread(
            wait_for, lambda: scrape(sidecar.metrics_url).value(PROTECTED), bool, "gauge 1"
        )
        assert gauge == 1
        assert await stream == 200

    puts = await asyncio.to_thread(wait_for, agent.puts, lambda p: len(p) == 2, "the removal")
    assert puts[1] == {"ProtectionEnabled": False, "status": 200}
    assert agent.protection()["ProtectionEnabled"] is False
    metrics = scrape(sidecar.metrics_url)
    assert metrics.value(PROTECTED) == 0
    assert metrics.value(CALLS, operation="protect", result="ok") == 1
    assert metrics.value(CALLS, operation="unprotect", result="ok") == 1
    assert [o["event"] for o in log_objects(sidecar.log_lines()) if "task prot" in o["event"]] == [
        "task protection on",
        "task protected",
        "task protection removed",
    ]


async def test_hundreds_of_concurrent_requests_make_one_protect_and_one_removal(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    sidecar = start_sidecar(
        standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION_IDLE_S="5"
    )
    load = await run_load(sidecar.url, 400, 32, "tp-load")
    assert [a.status for a in load.answers] == [200] * 400
    assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 15, "status": 200}]
    puts = await asyncio.to_thread(wait_for, agent.puts, lambda p: len(p) == 2, "the removal")
    assert puts[1]["ProtectionEnabled"] is False
    assert len(agent.puts()) == 2


async def test_a_long_stream_is_renewed_before_the_expiry(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        ECS_AGENT_URI=agent.uri,
        TASK_PROTECTION_MINUTES="1",
        TASK_PROTECTION_RENEW_S="0.5",
        TASK_PROTECTION_IDLE_S="1",
    )
    async with aiohttp.ClientSession() as session:
        assert await _stream(session, sidecar.url, "tp-renew") == 200
    puts = await asyncio.to_thread(
        wait_for, agent.puts, lambda p: p and p[-1]["ProtectionEnabled"] is False, "removal"
    )
    protects = _protects(puts)
    assert len(protects) >= 3, "a first protect and renewals while the stream ran"
    assert all(
        p == {"ProtectionEnabled": True, "ExpiresInMinutes": 1, "status": 200} for p in protects
    )
    # Renewals are paced by TASK_PROTECTION_RENEW_S, never by chunks or requests.
    times = [c["t"] for c in agent.journal() if c["method"] == "PUT"][: len(protects)]
    assert all(later - earlier >= 0.45 for earlier, later in itertools.pairwise(times))
    assert puts[-1] == {"ProtectionEnabled": False, "status": 200}
    assert puts[: len(protects)] == protects, "one removal, at the end"


async def test_agent_errors_never_touch_requests_and_are_counted(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    agent.control(status=500)
    failing = start_sidecar(standin_session.url, ECS_AGENT_URI=agent.uri)
    down = start_sidecar(standin_session.url, ECS_AGENT_URI=f"http://127.0.0.1:{free_port()}/api/x")
    for sidecar, result in ((failing, "server_error"), (down, "unreachable")):
        load = await run_load(sidecar.url, 20, 4, f"tp-{result}")
        assert [a.status for a in load.answers] == [200] * 20
        sidecar.wait_for_records([a.request_id for a in load.answers])
        metrics = await asyncio.to_thread(
            wait_for,
            lambda s=sidecar: scrape(s.metrics_url),
            lambda m, r=result: m.value(CALLS, operation="protect", result=r) >= 3,
            f"{result} counted",
        )
        assert metrics.value(CALLS, operation="protect", result=result) == 3, (
            "3 attempts, then a cool-down"
        )
        assert metrics.value(PROTECTED) == 0
        failures = logged(sidecar.log_lines(), "task protection call failed")
        assert [f["attempt"] for f in failures] == [1, 2, 3]
        assert {f["result"] for f in failures} == {result}
        assert not any("arn:" in line for line in sidecar.log_lines()), "no task ARN in logs"
    assert {f["code"] for f in logged(failing.log_lines(), "task protection call failed")} == {
        "ServerException"
    }
    assert [p["status"] for p in agent.puts()] == [500, 500, 500]


async def test_a_task_outside_a_service_stops_asking_after_one_call(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    """ECS answers TASK_NOT_VALID (a 200 with `failure`) for a task no service owns."""
    agent.control(failure="TASK_NOT_VALID")
    sidecar = start_sidecar(
        standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION_IDLE_S="0.2"
    )
    for round_ in range(2):
        load = await run_load(sidecar.url, 10, 2, f"tp-standalone-{round_}")
        assert [a.status for a in load.answers] == [200] * 10
        await asyncio.to_thread(
            wait_for,
            lambda: logged(
                sidecar.log_lines(), "task protection refused by ECS; off for this process"
            ),
            bool,
            "refusal logged",
        )
    assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 15, "status": 200}]
    [refused] = logged(sidecar.log_lines(), "task protection refused by ECS; off for this process")
    assert refused["code"] == "TASK_NOT_VALID"
    assert scrape(sidecar.metrics_url).value(CALLS, operation="protect", result="failure") == 1


async def test_sigterm_lets_protection_go_while_streams_finish(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    sidecar = start_sidecar(
        standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION_IDLE_S="600"
    )
    async with aiohttp.ClientSession() as session:
        stream = asyncio.create_task(_stream(session, sidecar.url, "tp-term"))
        await asyncio.to_thread(wait_for, agent.puts, bool, "a protect call")
        sidecar.proc.signal(signal.SIGTERM)
        puts = await asyncio.to_thread(wait_for, agent.puts, lambda p: len(p) == 2, "removal")
        assert not stream.done(), "removed at the stop, before the stream ended"
        assert puts[1] == {"ProtectionEnabled": False, "status": 200}
        assert await stream == 200
    assert await asyncio.to_thread(sidecar.proc.wait, 60) == 0
    assert agent.protection()["ProtectionEnabled"] is False
    assert len(agent.puts()) == 2, "never protected again while draining"


async def test_no_agent_calls_without_ecs_agent_uri_or_when_switched_off(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    local = start_sidecar(standin_session.url)
    off = start_sidecar(standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION="false")
    for sidecar, reason in ((local, "no ECS_AGENT_URI"), (off, "TASK_PROTECTION=false")):
        load = await run_load(sidecar.url, 10, 2, "tp-off")
        assert [a.status for a in load.answers] == [200] * 10
        [line] = logged(sidecar.log_lines(), "task protection off")
        assert line["reason"] == reason
        metrics = scrape(sidecar.metrics_url)
        assert metrics.total(CALLS) == 0 and metrics.value(PROTECTED) == 0
    assert agent.journal() == []


def _put_raw(url: str, body: bytes, method: str = "PUT") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


DECODE = {
    "Code": "InvalidParameterException",
    "Message": "UpdateTaskProtection: failed to decode request",
}


def test_the_agent_standin_refuses_what_the_agent_refuses(agent: Agent) -> None:
    """The stand-in's answers, row by row, as ecs-agent's handlers.go writes them."""
    url = f"{agent.uri}/task-protection/v1/state"
    arn = agent.protection()["TaskArn"]
    missing = {
        "Arn": arn,
        "Code": "InvalidParameterException",
        "Message": "Invalid request: does not contain 'ProtectionEnabled' field",
    }
    assert _put_raw(url, b"") == (400, {"error": DECODE})
    assert _put_raw(url, b'{"ProtectionEnabled": true, "Extra": 1}') == (400, {"error": DECODE})
    assert _put_raw(url, b'{"ProtectionEnabled": "yes"}') == (400, {"error": DECODE})
    assert _put_raw(url, b'{"ProtectionEnabled": true, "ExpiresInMinutes": 1.5}') == (
        400,
        {"error": DECODE},
    )
    assert _put_raw(url, b"{}") == (400, {"error": missing})
    assert _put_raw(url, b"null") == (400, {"error": missing})
    assert _put_raw(url, b'{"ExpiresInMinutes": 5}') == (400, {"error": missing})
    for minutes in (0, 2881):
        status, body = _put_raw(
            url, f'{{"ProtectionEnabled":true,"ExpiresInMinutes":{minutes}}}'.encode()
        )
        assert status == 400 and body["error"]["Code"] == "InvalidParameterException", body
        assert body["error"]["Arn"] == arn and body["requestID"]
    assert _put_raw(
        f"{agent.url}/api/other/task-protection/v1/state", b'{"ProtectionEnabled":true}'
    ) == (
        404,
        {
            "error": {
                "Code": "ResourceNotFoundException",
                "Message": "Failed to find a task for the request",
            }
        },
    )
    assert _put_raw(url, b'{"ProtectionEnabled": true}', method="POST") == (405, None)
    assert agent.protection()["ProtectionEnabled"] is False, "nothing above protected the task"

    # Go matches field names case-insensitively; without ExpiresInMinutes ECS gives 120 minutes.
    status, body = _put_raw(url, b'{"protectionenabled": true}')
    assert status == 200 and body["protection"]["ProtectionEnabled"] is True
    assert body["protection"]["TaskArn"] == arn and body["protection"]["ExpirationDate"].endswith(
        "Z"
    )
    assert _put_raw(url, b'{"ProtectionEnabled": false}') == (
        200,
        {"protection": {"ExpirationDate": None, "ProtectionEnabled": False, "TaskArn": arn}},
    )
    agent.control(failure="TASK_NOT_VALID")
    status, body = _put_raw(url, b'{"ProtectionEnabled": true}')
    assert (status, body["failure"]["Reason"]) == (200, "TASK_NOT_VALID")


# --- a hostile agent endpoint: the client's answer, never an exception -------------------------


@pytest.fixture
async def hostile_agent() -> Any:
    """A loopback server answering the state path the ways the real agent never does."""
    from aiohttp import web

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/get/task-protection/v1/state")

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"protection": {"ProtectionEnabled": False}})

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(64):
            await response.write(b" " * (1 << 20))
        await response.write(b'{"protection": {}}')
        return response

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000, content_type="application/json")

    app = web.Application()
    app.router.add_put("/redirect/task-protection/v1/state", redirect)
    app.router.add_get("/get/task-protection/v1/state", state)
    app.router.add_put("/huge/task-protection/v1/state", huge)
    app.router.add_put("/deep/task-protection/v1/state", deep)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("route", ["redirect", "huge", "deep"])
async def test_a_hostile_agent_answer_is_never_taken_for_protection(
    hostile_agent: str, route: str
) -> None:
    # A redirect once turned the PUT into a GET of the state, counted as protected; a
    # 64 MiB answer was read whole; deep nesting raised out of `put` and ended the driver.
    from sidecar_audit.task_protection import AgentClient

    async with aiohttp.ClientSession() as session:
        answer = await AgentClient(session, f"{hostile_agent}/{route}").put(
            {"ProtectionEnabled": True, "ExpiresInMinutes": 5}
        )
    assert not answer.ok
    assert answer.result == "malformed"


async def _hang_up(host: str, port: int, request: bytes, keep: int, read: int) -> None:
    """Send the first `keep` bytes of `request`, read up to `read` answer bytes, close."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request[:keep])
        await writer.drain()
        if read:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(read), 10)
    finally:
        writer.transport.abort()  # a RST, not a polite close


async def test_clients_hanging_up_at_every_instant_never_leave_the_task_protected(
    standin_session: Standin, start_sidecar: StartSidecar, agent: Agent
) -> None:
    # The busy count must come back to 0 whenever a client leaves: protection removed
    # after the quiet period, and asked again (not lost to a negative count) next time.
    sidecar = start_sidecar(
        standin_session.url, ECS_AGENT_URI=agent.uri, TASK_PROTECTION_IDLE_S="1"
    )
    host, port = sidecar.url.removeprefix("http://").split(":")
    body = orjson.dumps(chat_body("hang up", stream=True))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/json\r\nX-LLM-Source: tp-test\r\nX-LLM-User: u\r\n"
        "X-LLM-Request-Type: test\r\nX-Standin-ITL-Ms: 50\r\nX-Standin-Tokens: 40\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    cuts = [0, 10, len(head) - 1, len(head), len(head) + len(body) // 2, len(request)]
    await asyncio.gather(
        *(
            _hang_up(host, int(port), request, keep, read)
            for keep in cuts
            for read in ((0, 1, 400, 4000) if keep == len(request) else (0,))
        )
    )
    puts = await asyncio.to_thread(
        wait_for, agent.puts, lambda p: p and p[-1]["ProtectionEnabled"] is False, "the removal"
    )
    assert len(_protects(puts)) == 1
    async with aiohttp.ClientSession() as session:
        assert await _stream(session, sidecar.url, "tp-after-hangups") == 200
    await asyncio.to_thread(wait_for, agent.puts, lambda p: len(_protects(p)) == 2, "again")
