"""`POST /v1/completions`: vLLM's legacy completion endpoint, streamed or not.

Several prompts give `n` choices each, numbered `choice + prompt_index * n` and
seeded by their own prompt. `max_tokens` defaults to 16 as in vLLM's
`CompletionRequest`, so an unbounded request ends with `finish_reason` `length`
unless the answer is shorter.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from vllm_standin.bodies import parse_completion
from vllm_standin.completion_wire import CompletionHead, CompletionStream, completion_body
from vllm_standin.errors import api_error
from vllm_standin.generate import await_full, stream_events
from vllm_standin.intake import Accepted, accept
from vllm_standin.plan import ChoicePlan, Shape, plan_choice
from vllm_standin.respond import run_stream, send_bytes, send_error
from vllm_standin.runtime import base_request_id, created_now


def _plans(accepted: Accepted) -> list[ChoicePlan]:
    parsed = accepted.request
    return [
        dataclasses.replace(
            plan_choice(
                prompt, choice, Shape(accepted.tokens_of(choice)), parsed.max_tokens[prompt_index]
            ),
            index=choice + prompt_index * parsed.n,
        )
        for prompt_index, prompt in enumerate(parsed.prompts)
        for choice in range(parsed.n)
    ]


async def completions(request: web.Request) -> web.StreamResponse:
    accepted = await accept(request, parse_completion)
    if not isinstance(accepted, Accepted):
        return accepted
    parsed, controls = accepted.request, accepted.controls
    plans = _plans(accepted)
    head = CompletionHead(
        request_id=f"cmpl-{base_request_id(request, parsed.request_id)}",
        created=created_now(controls.created),
        model=parsed.model,
        fingerprint=accepted.runtime.fingerprint,
        prompt_tokens=parsed.prompt_tokens,
        n=parsed.n,
        include_usage=parsed.include_usage,
        continuous_usage=parsed.continuous_usage,
    )
    pace = accepted.pace
    if parsed.stream:
        encoder = CompletionStream(head)
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
