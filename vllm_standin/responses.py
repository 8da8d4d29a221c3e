"""`POST /v1/responses`: vLLM's Responses endpoint for a plain generation model, streamed
or not (text output; no tools, no reasoning parser, no background mode or storage).
"""

from __future__ import annotations

import secrets

from aiohttp import web

from vllm_standin.bodies import parse_responses
from vllm_standin.errors import api_error
from vllm_standin.generate import await_full, stream_events
from vllm_standin.intake import Accepted, accept
from vllm_standin.plan import Shape, plan_choice
from vllm_standin.respond import run_stream, send_bytes, send_error
from vllm_standin.responses_wire import ResponsesHead, ResponsesStream, responses_body
from vllm_standin.runtime import created_now


def echoed_tool_choice(body: object) -> object:
    """The `tool_choice` the response echoes: `ResponsesRequest.check_tool_usage`
    (`openai/responses/protocol.py:830-867`) turns `"auto"` (the default) and `"none"`
    into `"none"` when the request has no tools; otherwise the request's value."""
    fields = body if isinstance(body, dict) else {}
    tools, choice = fields.get("tools"), fields.get("tool_choice", "auto")
    if not tools and choice in ("auto", "none"):
        return "none"
    return choice


async def responses(request: web.Request) -> web.StreamResponse:
    accepted = await accept(request, parse_responses)
    if not isinstance(accepted, Accepted):
        return accepted
    parsed, controls = accepted.request, accepted.controls
    plan = plan_choice(parsed.seed_text, 0, Shape(accepted.tokens_of(0)), parsed.max_tokens[0])
    head = ResponsesHead(
        # ResponsesRequest.request_id: the body's, else resp_ + random_uuid() (16 hex)
        response_id=parsed.request_id or f"resp_{secrets.token_hex(8)}",
        created=created_now(controls.created),
        model=parsed.model,
        prompt_tokens=parsed.total_prompt_tokens,
        max_output_tokens=parsed.max_tokens[0],
        tool_choice=echoed_tool_choice(accepted.document),
    )
    if parsed.stream:
        encoder = ResponsesStream(head)
        return await run_stream(
            request,
            accepted.runtime.journal,
            accepted.entry,
            lambda out: stream_events(out, encoder, [plan], accepted.pace, controls),
        )
    if not await await_full([plan], accepted.pace, controls):
        error = api_error("Internal server error", "InternalServerError", 500)
        return await send_error(request, error)
    return await send_bytes(request, 200, responses_body(head, plan), compress=controls.has("gzip"))
