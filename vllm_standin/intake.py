"""The front half of every generation endpoint: controls, scenarios that answer early, body.

Order: malformed `x-standin-*` → 400; `hang` → never answer; body decoding and
validation (vLLM's errors); `http_error` → the scenario's error. What survives is a
validated request plus the test controls, ready to be generated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from vllm_standin.bodies import GenerateRequest, Limits, decode_json
from vllm_standin.errors import ApiError, bad_request, scenario_error
from vllm_standin.generate import Pace, forever
from vllm_standin.journal import Entry
from vllm_standin.respond import send_error
from vllm_standin.runtime import ENTRY, RUNTIME, Runtime
from vllm_standin.scenarios import BadControl, Controls, parse_controls

Parser = Callable[[object, Limits], GenerateRequest | ApiError]
Translate = Callable[[ApiError], ApiError]


def _same(error: ApiError) -> ApiError:
    return error


_API_NAMES = {
    "/v1/chat/completions": "Chat Completions",
    "/v1/messages": "Messages",
    "/v1/responses": "Responses",
}


@dataclass(frozen=True, slots=True)
class Accepted:
    runtime: Runtime
    entry: Entry
    controls: Controls
    request: GenerateRequest
    document: object  # the body as decoded (decode_json), for fields `request` does not keep

    @property
    def pace(self) -> Pace:
        options = self.runtime.options
        return Pace.of(self.controls, options.ttft_ms, options.itl_ms)

    @property
    def content_tokens(self) -> int:
        tokens = self.controls.tokens
        return self.runtime.options.tokens if tokens is None else tokens

    def tokens_of(self, choice: int) -> int:
        """Content tokens of choice `choice` (`x-standin-choice-tokens`, else the default)."""
        per_choice = self.controls.choice_tokens
        if not per_choice:
            return self.content_tokens
        return per_choice[min(choice, len(per_choice) - 1)]


async def accept(
    request: web.Request, parse: Parser, translate: Translate = _same
) -> Accepted | web.StreamResponse:
    """A validated generation request, or the response already sent in its place.

    `translate` reshapes the errors the route's handler builds (vLLM's Messages route
    answers in Anthropic's shape; it must leave request-validation errors alone, which
    FastAPI raises before the route runs, in vLLM's own shape on every route).
    """
    runtime = request.app[RUNTIME]
    entry = request[ENTRY]
    try:
        controls = parse_controls(request.headers)
    except BadControl as exc:
        return await send_error(request, bad_request(str(exc)))
    entry.scenario = ",".join(sorted(controls.scenarios))
    if controls.has("hang"):
        await forever()
    document = decode_json(await request.read(), request.headers.get("Content-Type"))
    if isinstance(document, ApiError):
        return await send_error(request, document)
    parsed = parse(document, runtime.limits)
    if isinstance(parsed, ApiError):
        return await send_error(request, translate(parsed))
    if controls.has("http_error"):
        api = _API_NAMES.get(request.path, "Completions")
        error = scenario_error(
            controls.error_status, parsed.model, runtime.limits.max_model_len, api
        )
        return await send_error(request, translate(error))
    return Accepted(runtime, entry, controls, parsed, document)
