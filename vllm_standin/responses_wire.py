"""OpenAI Responses (`/v1/responses`) bytes as vLLM 0.33.0 serves them for a plain
generation model (no harmony, no response parser; see WIRE_FORMAT.md).

Stream (`openai/responses/serving.py:1343-1457`, `streaming_events.py:835-954`,
framing `openai/responses/api_router.py:34-45`): each event is
`event: <type>\\ndata: <model_dump_json(by_alias=True)>\\n\\n` — every field of the
openai type, in its field order, no exclusions — with `sequence_number` counting
from 0. `response.created` and `response.in_progress` go out before the first token;
the first text opens the message item (`output_item.added`, `content_part.added`),
each token is an `output_text.delta`, and at the end the item is closed
(`output_text.done`, `content_part.done`, `output_item.done`) and the terminal
`response.completed` (or `response.incomplete` when `max_output_tokens` cut it)
carries the whole response with usage. Empty deltas (the EOS token) produce nothing.
A generation error has no event: the `GenerationError` handler validates
`{"error": ...}` against the event union, which fails, the exception escapes the
generator and uvicorn drops the connection (`error_events` returns None).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from vllm_standin.plan import ChoicePlan, Kind


@dataclass(frozen=True, slots=True)
class ResponsesHead:
    response_id: str
    created: int
    model: str
    prompt_tokens: int
    max_output_tokens: int
    tool_choice: object  # as echoed: `responses.echoed_tool_choice`


def _status(plan: ChoicePlan) -> str:
    return "incomplete" if plan.finish_reason == "length" else "completed"


def _usage(head: ResponsesHead, completion: int) -> dict[str, object]:
    """`ResponseUsage` as `responses_full_generator` builds it (`serving.py:896-920`,
    models `protocol.py:98-117`) from a `SimpleContext`, whose `all_turn_metrics` stays
    empty (`context.py:202-209`): the four `*_per_turn` lists are `[]`."""
    return {
        "input_tokens": head.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": head.prompt_tokens + completion,
    }


def response_object(
    head: ResponsesHead, output: list[dict[str, object]], status: str, usage: object
) -> dict[str, object]:
    """`ResponsesResponse.from_request(...)` dumped (`protocol.py:870-1031`), field order kept;
    sampling values are vLLM's defaults (temperature and top_p 1.0, penalties 0.0), and
    `tool_choice` is the request's after its validators (`head.tool_choice`)."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": head.response_id,
        "created_at": head.created,
        "incomplete_details": incomplete,
        "instructions": None,
        "metadata": None,
        "model": head.model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": head.tool_choice,
        "tools": [],
        "top_p": 1.0,
        "background": False,
        "max_output_tokens": head.max_output_tokens,
        "max_tool_calls": None,
        "previous_response_id": None,
        "prompt": None,
        "prompt_cache_options": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": None,
        "safety_identifier": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


def _text_part(text: str, logprobs: list[object] | None) -> dict[str, object]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _message_item(item_id: str, content: list[object], status: str) -> dict[str, object]:
    return {
        "id": item_id,
        "content": content,
        "role": "assistant",
        "status": status,
        "type": "message",
        "phase": None,
    }


def _output(plan: ChoicePlan, item_id: str) -> list[dict[str, object]]:
    text = plan.text(Kind.CONTENT)
    content: list[object] = [_text_part(text, None)] if text else []
    return [_message_item(item_id, content, _status(plan))]


class ResponsesStream:
    """Encodes the events of one streamed Responses answer (one output, n is 1)."""

    __slots__ = ("_head", "_item_id", "_open", "_seq", "_text")

    def __init__(self, head: ResponsesHead) -> None:
        self._head = head
        self._seq = 0
        self._item_id = f"msg_{secrets.token_hex(8)}"
        self._open = False
        self._text: list[str] = []

    @property
    def done(self) -> None:
        return None

    def _event(self, payload: dict[str, object]) -> bytes:
        payload["sequence_number"] = self._seq
        self._seq += 1
        kind = payload["type"]
        # The openai event types used here declare their fields in alphabetical order.
        ordered = {k: payload[k] for k in sorted(payload)}
        return b"event: " + str(kind).encode() + b"\ndata: " + orjson.dumps(ordered) + b"\n\n"

    def preamble(self) -> list[bytes]:
        initial = response_object(self._head, [], "in_progress", None)
        return [
            self._event({"type": "response.created", "response": initial}),
            self._event({"type": "response.in_progress", "response": initial}),
        ]

    def opening(self) -> list[bytes]:
        return []

    def event(self, plan: ChoicePlan, position: int) -> list[bytes]:
        step = plan.steps[position]
        if step.kind is not Kind.CONTENT or not step.text:
            return []
        events = []
        if not self._open:
            self._open = True
            item = _message_item(self._item_id, [], "in_progress")
            events.append(
                self._event({"type": "response.output_item.added", "item": item, "output_index": 0})
            )
            part = _text_part("", [])
            events.append(
                self._event(
                    {
                        "type": "response.content_part.added",
                        "content_index": 0,
                        "item_id": self._item_id,
                        "output_index": 0,
                        "part": part,
                    }
                )
            )
        self._text.append(step.text)
        delta = {
            "type": "response.output_text.delta",
            "content_index": 0,
            "delta": step.text,
            "item_id": self._item_id,
            "logprobs": [],
            "output_index": 0,
        }
        events.append(self._event(delta))
        return events

    def closing(self, plans: Sequence[ChoicePlan]) -> list[bytes]:
        plan = plans[0]
        events = []
        status = _status(plan)
        if self._open:
            text = "".join(self._text)
            part = _text_part(text, None)
            common = {"content_index": 0, "item_id": self._item_id, "output_index": 0}
            events.append(
                self._event(
                    {"type": "response.output_text.done", **common, "logprobs": [], "text": text}
                )
            )
            events.append(
                self._event({"type": "response.content_part.done", **common, "part": part})
            )
            item = _message_item(self._item_id, [part] if text else [], status)
            events.append(
                self._event({"type": "response.output_item.done", "item": item, "output_index": 0})
            )
        output = _output(plan, self._item_id) if self._open else []
        usage = _usage(self._head, plan.completion_tokens)
        final = response_object(self._head, output, status, usage)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._event({"type": kind, "response": final}))
        return events

    def error_events(self, message: str, err_type: str, code: int) -> None:
        return None  # vLLM sends nothing: the connection is dropped


def responses_body(head: ResponsesHead, plan: ChoicePlan) -> bytes:
    """A non-streamed answer: the response object (`model_dump(mode="json", by_alias=True)`)."""
    output = _output(plan, f"msg_{secrets.token_hex(8)}")
    usage = _usage(head, plan.completion_tokens)
    return orjson.dumps(response_object(head, output, _status(plan), usage))
