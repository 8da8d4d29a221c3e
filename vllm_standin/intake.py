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


@dataclass(frozen=True, slots=True)
class Accepted:
    runtime: Runtime
    entry: Entry
    controls: Controls
    request: GenerateRequest

    @property
    def pace(self) -> Pace:
        options = self.runtime.options
        return Pace.of(self.controls, options.ttft_ms, options.itl_ms)

    @property
    def content_tokens(self) -> int:
        tokens = self.controls.tokens
        return self.runtime.options.tokens if tokens is None else tokens


async def accept(request: web.Request, parse: Parser) -> Accepted | web.StreamResponse:
    """A validated generation request, or the response already sent in its place."""
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
        return await send_error(request, parsed)
    if controls.has("http_error"):
        api = "Chat Completions" if request.path.endswith("/chat/completions") else "Completions"
        error = scenario_error(
            controls.error_status, parsed.model, runtime.limits.max_model_len, api
        )
        return await send_error(request, error)
    return Accepted(runtime, entry, controls, parsed)
