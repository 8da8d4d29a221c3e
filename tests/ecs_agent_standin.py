"""A stand-in for the ECS agent's task-protection endpoint, run as a real process in tests.

`python -m tests.ecs_agent_standin --port P [--container-id ID] [--task-arn ARN]`.
The sidecar reaches it as `ECS_AGENT_URI=http://127.0.0.1:P/api/<ID>`.

What it copies from amazon-ecs-agent (read at commit 8dfceca6, 2026-06):

- Routes (`agent/handlers/task_server_setup.go`, `agentAPIV1HandlersSetup`): PUT and
  GET `/api/{endpointContainerID}/task-protection/v1/state`; another method on that
  path gets gorilla/mux's 405 with an empty body.
- PUT (`ecs-agent/tmds/handlers/taskprotection/v1/handlers/handlers.go`,
  `UpdateTaskProtectionHandler`), in the agent's order:
  1. the body is decoded by Go's `encoding/json` into `{ProtectionEnabled *bool,
     ExpiresInMinutes *int64}` with `DisallowUnknownFields` (keys match
     case-insensitively; only the first JSON value is read): any decode error is
     400 `{"error": {"Code": "InvalidParameterException", "Message":
     "UpdateTaskProtection: failed to decode request"}}` (no Arn: `omitempty`);
  2. an unknown container id is 404 `ResourceNotFoundException` "Failed to find a
     task for the request" (`getTaskMetadataErrorResponse`);
  3. a missing (or null) ProtectionEnabled is 400 with the task's Arn and
     "Invalid request: does not contain 'ProtectionEnabled' field";
  4. then ECS's UpdateTaskProtection. An ECS error comes back with ECS's HTTP
     status and `{"requestID": …, "error": {"Arn", "Code", "Message"}}`
     (`logAndHandleECSError`); ECS's range check of ExpiresInMinutes (1-2880, API
     reference) is such an error: 400 InvalidParameterException (the message is
     ours: ECS's wording is not in the agent). One ECS `failure` is 200
     `{"failure": {"Arn", "Detail", "Reason"}}` (`logAndValidateECSResponse`).
  5. Success is 200 `{"protection": {"ExpirationDate", "ProtectionEnabled",
     "TaskArn"}}` (`types.go`: the SDK's `ProtectedTask` marshalled by Go, a
     time as RFC 3339, null when protection is off). Without ExpiresInMinutes the
     protection lasts 120 minutes; ECS clears it at expiry.
- GET answers the same `{"protection": …}` shape.

Test controls, not the agent's: `GET /journal` lists every call to the endpoint
(method, raw body, status, time); `POST /control` with `{"status": 500}` makes
ECS fail with that status (ServerException) and `{"failure": "TASK_NOT_VALID"}`
answers ECS failures; `{}` restores normal answers; `{"delay_s": x}` delays
every answer (a slow ECS call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

DEFAULT_MINUTES = 120
MAX_MINUTES = 2880


class DecodeError(ValueError):
    """What Go's decoder would refuse."""


@dataclass
class Agent:
    container_id: str
    task_arn: str
    protected: bool = False
    expires: datetime | None = None
    journal: list[dict[str, Any]] = field(default_factory=list)
    control: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        if self.protected and self.expires is not None and datetime.now(UTC) >= self.expires:
            self.protected, self.expires = False, None  # ECS clears protection at expiry
        return {
            "ExpirationDate": _go_time(self.expires) if self.protected else None,
            "ProtectionEnabled": self.protected,
            "TaskArn": self.task_arn,
        }


def _go_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_FIELDS = {"protectionenabled": "ProtectionEnabled", "expiresinminutes": "ExpiresInMinutes"}


def decode_request(body: bytes) -> dict[str, Any]:
    """Go's `json.Decoder` with DisallowUnknownFields into the agent's request struct."""
    text = body.decode("utf-8", errors="replace").lstrip()
    if not text:
        raise DecodeError("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)  # trailing bytes are never read
    except json.JSONDecodeError as exc:
        raise DecodeError(str(exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError("cannot unmarshal into Go value of type TaskProtectionRequest")
    decoded: dict[str, Any] = {}
    for key, item in value.items():
        name = _FIELDS.get(key.lower())
        if name is None:
            raise DecodeError(f'json: unknown field "{key}"')
        if item is None:
            decoded.pop(name, None)
        elif name == "ProtectionEnabled":
            if not isinstance(item, bool):
                raise DecodeError("cannot unmarshal into bool")
            decoded[name] = item
        else:
            if isinstance(item, bool) or not isinstance(item, int):
                raise DecodeError("cannot unmarshal into int64")
            if not -(2**63) <= item < 2**63:
                raise DecodeError("value out of range for int64")
            decoded[name] = item
    return decoded


def _error(status: int, code: str, message: str, arn: str = "", request_id: str = "") -> Any:
    error: dict[str, Any] = {"Code": code, "Message": message}
    if arn:
        error = {"Arn": arn, **error}
    body: dict[str, Any] = {"error": error}
    if request_id:
        body = {"requestID": request_id, **body}
    return web.json_response(body, status=status)


AGENT = web.AppKey("agent", Agent)


async def _put(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    try:
        wanted = decode_request(await request.read())
    except DecodeError:
        return _error(
            400, "InvalidParameterException", "UpdateTaskProtection: failed to decode request"
        )
    if request.match_info["container"] != agent.container_id:
        return _error(404, "ResourceNotFoundException", "Failed to find a task for the request")
    if "ProtectionEnabled" not in wanted:
        return _error(
            400,
            "InvalidParameterException",
            "Invalid request: does not contain 'ProtectionEnabled' field",
            agent.task_arn,
        )
    ecs_request = str(uuid.uuid4())
    failed = await _ecs_trouble(agent, ecs_request)
    if failed is not None:
        return failed
    if wanted["ProtectionEnabled"]:
        minutes = wanted.get("ExpiresInMinutes", DEFAULT_MINUTES)
        if not 1 <= minutes <= MAX_MINUTES:
            return _error(
                400,
                "InvalidParameterException",
                "expiresInMinutes must be between 1 and 2880 (stand-in wording)",
                agent.task_arn,
                ecs_request,
            )
        agent.protected = True
        agent.expires = datetime.now(UTC) + timedelta(minutes=minutes)
    else:
        agent.protected, agent.expires = False, None
    return web.json_response({"protection": agent.state()})


async def _get(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if request.match_info["container"] != agent.container_id:
        return _error(404, "ResourceNotFoundException", "Failed to find a task for the request")
    failed = await _ecs_trouble(agent, str(uuid.uuid4()))
    return failed or web.json_response({"protection": agent.state()})


async def _ecs_trouble(agent: Agent, ecs_request: str) -> web.Response | None:
    """What the test asked ECS to do instead of answering normally."""
    control = agent.control
    if control.get("delay_s"):
        await asyncio.sleep(float(control["delay_s"]))
    if control.get("status"):
        return _error(
            int(control["status"]),
            "ServerException",
            "Service unavailable",
            agent.task_arn,
            ecs_request,
        )
    if control.get("failure"):
        failure = {"Arn": agent.task_arn, "Detail": None, "Reason": control["failure"]}
        return web.json_response({"failure": failure})
    return None


@web.middleware
async def _journal(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.endswith("/task-protection/v1/state"):
        return await handler(request)  # type: ignore[no-any-return]
    body = await request.read()
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        response = web.Response(status=exc.status)  # gorilla/mux: empty body
    request.app[AGENT].journal.append(
        {
            "t": time.time(),
            "method": request.method,
            "body": body.decode("utf-8", errors="replace"),
            "status": response.status,
        }
    )
    return response


async def _journal_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].journal)


async def _control(request: web.Request) -> web.Response:
    request.app[AGENT].control = await request.json()
    return web.json_response(request.app[AGENT].control)


def build_app(container_id: str, task_arn: str) -> web.Application:
    app = web.Application(middlewares=[_journal])
    app[AGENT] = Agent(container_id, task_arn)
    path = "/api/{container}/task-protection/v1/state"
    app.router.add_put(path, _put)
    app.router.add_get(path, _get)
    app.router.add_get("/journal", _journal_view)
    app.router.add_post("/control", _control)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.ecs_agent_standin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--container-id", default="0123456789abcdef-1234567890")
    parser.add_argument(
        "--task-arn",
        default="arn:aws:ecs:eu-central-1:123456789012:task/central-llm-service-cluster/"
        "0123456789abcdef0123456789abcdef",
    )
    args = parser.parse_args(argv)
    web.run_app(
        build_app(args.container_id, args.task_arn),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
