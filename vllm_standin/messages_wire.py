"""Anthropic Messages (`/v1/messages`) bytes as vLLM 0.33.0 serialises them (see WIRE_FORMAT.md).

vLLM serves Messages by running a chat completion underneath (stream options forced
to include_usage + continuous_usage_stats, `anthropic/serving.py:700-714`) and
converting each chat chunk (`message_stream_converter`, `:918-1247`). Every event is
`event: <type>\\ndata: <json>\\n\\n` (`wrap_data_with_event`, `:154-155`), the JSON an
`AnthropicStreamEvent` dumped with `exclude_unset=True`, keys in the model's field
order (type, message, delta, content_block, index, error, usage). There is no
`[DONE]`. The converter keeps one open content block at a time: a change of kind
(thinking → text → tool_use) closes the block (a thinking block first gets its
`signature_delta`) and opens the next; empty text deltas (the role chunk, the EOS
token) produce nothing. Pure encoding; one `MessagesStream` per stream (it holds the
open block).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from vllm_standin.plan import ChoicePlan, Kind, Step

# anthropic/protocol.py:33-54 `translate_error_type`
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> bytes:
    """`AnthropicErrorResponse(...).model_dump()` (`anthropic/api_router.py:41-51`)."""
    error = {"type": anthropic_error_type(status), "message": message}
    return orjson.dumps({"type": "error", "error": error})


def stop_reason(plan: ChoicePlan) -> str:
    """`_to_anthropic_stop_reason` (`anthropic/serving.py:114-143`) for a natural stop."""
    if plan.finish_reason == "length":
        return "max_tokens"
    return "tool_use" if plan.has_tool_calls else "end_turn"


def _event(kind: str, payload: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@dataclass(frozen=True, slots=True)
class MessagesHead:
    message_id: str
    model: str
    prompt_tokens: int


class MessagesStream:
    """Encodes the events of one streamed Messages answer (n is always 1)."""

    __slots__ = ("_block", "_head", "_index", "_signature")

    def __init__(self, head: MessagesHead) -> None:
        self._head = head
        self._block: str | None = None  # the open block's type
        self._index = 0  # the next block's index (content_block_index)
        self._signature = ""

    @property
    def done(self) -> None:
        return None

    def preamble(self) -> list[bytes]:
        return []

    def opening(self) -> list[bytes]:
        """`message_start`, built from the role chunk (usage: prompt tokens, 0 output)."""
        head = self._head
        message: dict[str, object] = {
            "id": head.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": head.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": head.prompt_tokens, "output_tokens": 0},
        }
        return [_event("message_start", {"type": "message_start", "message": message})]

    def _stop_block(self) -> list[bytes]:
        if self._block is None:
            return []
        events = []
        index = self._index
        if self._block == "thinking":
            delta = {"type": "signature_delta", "signature": self._signature}
            payload = {"type": "content_block_delta", "delta": delta, "index": index}
            events.append(_event("content_block_delta", payload))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        self._block = None
        self._index += 1
        return events

    def _start_block(self, block: dict[str, object]) -> bytes:
        self._block = str(block["type"])
        if self._block == "thinking":
            self._signature = secrets.token_hex(16)  # uuid.uuid4().hex in vLLM
        payload = {"type": "content_block_start", "content_block": block, "index": self._index}
        return _event("content_block_start", payload)

    def _delta(self, delta: dict[str, object]) -> bytes:
        payload = {"type": "content_block_delta", "delta": delta, "index": self._index}
        return _event("content_block_delta", payload)

    def _switch(self, kind: str, block: dict[str, object]) -> list[bytes]:
        if self._block == kind and kind != "tool_use":
            return []
        return [*self._stop_block(), self._start_block(block)]

    def _step_events(self, step: Step) -> list[bytes]:
        kind = step.kind
        if kind is Kind.REASONING:
            events = self._switch("thinking", {"type": "thinking", "thinking": ""})
            return [*events, self._delta({"type": "thinking_delta", "thinking": step.text})]
        if kind is Kind.CONTENT and step.text:
            events = self._switch("text", {"type": "text", "text": ""})
            return [*events, self._delta({"type": "text_delta", "text": step.text})]
        if kind is Kind.TOOL_START:
            block: dict[str, object] = {
                "type": "tool_use",
                "id": step.call_id,
                "name": step.text,
                "input": {},
            }
            return self._switch("tool_use", block)
        if kind is Kind.TOOL_ARGS:
            return [self._delta({"type": "input_json_delta", "partial_json": step.text})]
        return []  # EOS: "" or {} — nothing

    def event(self, plan: ChoicePlan, position: int) -> list[bytes]:
        return self._step_events(plan.steps[position])

    def closing(self, plans: Sequence[ChoicePlan]) -> list[bytes]:
        """From the usage chunk: close the block, `message_delta`; then `message_stop`."""
        plan = plans[0]
        usage = {"input_tokens": self._head.prompt_tokens, "output_tokens": plan.completion_tokens}
        delta = {"stop_reason": stop_reason(plan), "stop_sequence": None}
        return [
            *self._stop_block(),
            _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            _event("message_stop", {"type": "message_stop"}),
        ]

    def error_events(self, message: str, err_type: str, code: int) -> list[bytes]:
        """The open block closed, then an `error` event; no `message_stop` (`:1227-1247`)."""
        error = {"type": anthropic_error_type(code), "message": message}
        return [*self._stop_block(), _event("error", {"type": "error", "error": error})]


def messages_body(head: MessagesHead, plan: ChoicePlan) -> bytes:
    """`messages_full_converter` dumped with `exclude_none=True` (`:861-916`)."""
    content: list[dict[str, object]] = []
    reasoning = plan.text(Kind.REASONING)
    if reasoning:
        signature = secrets.token_hex(16)
        content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    text = plan.text(Kind.CONTENT)
    if text:
        content.append({"type": "text", "text": text})
    for call in plan.tool_calls():
        try:
            arguments = orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            continue  # cut by max_tokens: vLLM's tool parser reports no such call
        block = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": arguments}
        content.append(block)
    if not content:
        content.append({"type": "text", "text": ""})
    return orjson.dumps(
        {
            "id": head.message_id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": head.model,
            "stop_reason": stop_reason(plan),
            "usage": {"input_tokens": head.prompt_tokens, "output_tokens": plan.completion_tokens},
        }
    )
