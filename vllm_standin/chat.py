"""`POST /v1/chat/completions`: vLLM's chat endpoint, streamed or not, with test scenarios.

The answer is planned in full before the first byte (deterministic in the prompt),
then paced out by `generate`. `reasoning` behaves as if vLLM ran with a reasoning
parser, `tool_calls` as if it ran with `--enable-auto-tool-choice` and a tool parser.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from vllm_standin.bodies import parse_chat
from vllm_standin.chat_wire import ChatStream, StreamHead, completion_body
from vllm_standin.errors import api_error
from vllm_standin.generate import await_full, stream_events
from vllm_standin.intake import Accepted, accept
from vllm_standin.plan import DEFAULT_TOOL_NAMES, ChoicePlan, Shape, plan_choice
from vllm_standin.respond import run_stream, send_bytes, send_error
from vllm_standin.runtime import base_request_id, created_now

TOOL_CALLS_PER_ANSWER = 2


def _shape(accepted: Accepted) -> Shape:
    controls = accepted.controls
    names: tuple[str, ...] = ()
    if controls.has("tool_calls"):
        offered = accepted.request.tool_names or DEFAULT_TOOL_NAMES
        names = tuple(offered[i % len(offered)] for i in range(TOOL_CALLS_PER_ANSWER))
    return Shape(accepted.content_tokens, controls.has("reasoning"), names)


def chat_plans(accepted: Accepted, shape: Shape) -> list[ChoicePlan]:
    """Every choice's steps; `x-standin-choice-tokens` gives each choice its own length."""
    parsed = accepted.request
    return [
        plan_choice(
            parsed.seed_text,
            i,
            dataclasses.replace(shape, content_tokens=accepted.tokens_of(i)),
            parsed.max_tokens[0],
        )
        for i in range(parsed.n)
    ]


def _head(request: web.Request, accepted: Accepted, shape: Shape) -> StreamHead:
    parsed = accepted.request
    return StreamHead(
        request_id=f"chatcmpl-{base_request_id(request, parsed.request_id)}",
        created=created_now(accepted.controls.created),
        model=parsed.model,
        fingerprint=accepted.runtime.fingerprint,
        prompt_tokens=parsed.total_prompt_tokens,
        include_usage=parsed.include_usage,
        continuous_usage=parsed.continuous_usage,
        reasoning_parser=shape.reasoning,
        parser=shape.reasoning or bool(shape.tool_names),
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    accepted = await accept(request, parse_chat)
    if not isinstance(accepted, Accepted):
        return accepted
    parsed, controls = accepted.request, accepted.controls
    shape = _shape(accepted)
    plans = chat_plans(accepted, shape)
    head = _head(request, accepted, shape)
    pace = accepted.pace
    if parsed.stream:
        encoder = ChatStream(head, parsed.n)
        return await run_stream(
            request,
            accepted.runtime.journal,
            accepted.entry,
            lambda out: stream_events(
                out,
                encoder,
                plans,
                pace,
                controls,
                accepted.runtime.options.sse_keep_alive_interval,
            ),
        )
    if not await await_full(plans, pace, controls):
        error = api_error("Internal server error", "InternalServerError", 500)
        return await send_error(request, error)
    body = completion_body(head, plans)
    return await send_bytes(request, 200, body, compress=controls.has("gzip"))
