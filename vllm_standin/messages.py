"""`POST /v1/messages`: vLLM's Anthropic Messages endpoint, streamed or not.

vLLM runs it as a chat completion (n = 1) and converts the result, so the answer is
planned like a chat answer: `thinking` enabled or adaptive, or the `reasoning`
scenario, gives a thinking block (as with a reasoning parser); the `tool_calls`
scenario gives `tool_use` blocks named after the request's Anthropic `tools`. Errors
the route builds are in Anthropic's shape; request-validation errors keep vLLM's.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from vllm_standin.bodies import parse_messages
from vllm_standin.errors import ApiError, api_error
from vllm_standin.generate import await_full, stream_events
from vllm_standin.intake import Accepted, accept
from vllm_standin.messages_wire import (
    MessagesHead,
    MessagesStream,
    anthropic_error_body,
    messages_body,
)
from vllm_standin.plan import DEFAULT_TOOL_NAMES, Shape, plan_choice
from vllm_standin.respond import run_stream, send_bytes, send_error
from vllm_standin.runtime import base_request_id

TOOL_CALLS_PER_ANSWER = 2


def to_anthropic(error: ApiError) -> ApiError:
    """`translate_error_response` for errors raised inside the route; validation errors
    (type `Bad Request`, raised by FastAPI before the route) are left in vLLM's shape."""
    info = orjson.loads(error.body).get("error", {})
    if info.get("type") == "Bad Request":
        return error
    return ApiError(error.status, anthropic_error_body(error.status, str(info.get("message"))))


def _tool_names(body: object) -> tuple[str, ...]:
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list):
        return ()
    return tuple(t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str))


def _shape(accepted: Accepted, body: object) -> Shape:
    controls = accepted.controls
    thinking = body.get("thinking") if isinstance(body, dict) else None
    reasoning = controls.has("reasoning") or (
        isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    )
    names: tuple[str, ...] = ()
    if controls.has("tool_calls"):
        offered = _tool_names(body) or DEFAULT_TOOL_NAMES
        names = tuple(offered[i % len(offered)] for i in range(TOOL_CALLS_PER_ANSWER))
    return Shape(accepted.tokens_of(0), reasoning, names)


async def messages(request: web.Request) -> web.StreamResponse:
    accepted = await accept(request, parse_messages, to_anthropic)
    if not isinstance(accepted, Accepted):
        return accepted
    parsed, controls = accepted.request, accepted.controls
    body = orjson.loads(await request.read())  # valid: accept() parsed it already
    plan = plan_choice(parsed.seed_text, 0, _shape(accepted, body), parsed.max_tokens[0])
    head = MessagesHead(
        message_id=f"chatcmpl-{base_request_id(request)}",
        model=parsed.model,
        prompt_tokens=parsed.total_prompt_tokens,
    )
    if parsed.stream:
        encoder = MessagesStream(head)
        return await run_stream(
            request,
            accepted.runtime.journal,
            accepted.entry,
            lambda out: stream_events(out, encoder, [plan], accepted.pace, controls),
        )
    if not await await_full([plan], accepted.pace, controls):
        error = api_error("Internal server error", "InternalServerError", 500)
        return await send_error(request, to_anthropic(error))
    return await send_bytes(request, 200, messages_body(head, plan), compress=controls.has("gzip"))
