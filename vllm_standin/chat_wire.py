"""Chat completion bytes exactly as vLLM 0.33.0 serialises them (see WIRE_FORMAT.md).

Stream events are `data: <json>\\n\\n` built by concatenating pre-encoded pieces: the
per-choice prefix (id, object, created, model, index) and the constant suffix are
encoded once per request, so a token event costs one `orjson.dumps` of its text and
one `bytes.join`. Key order and present/absent keys follow vLLM's pydantic models
dumped with `exclude_unset=True` (streams) or in full (non-streamed bodies): every
token and terminal chunk ends with `"kv_transfer_params":null` (passed explicitly by
the server), the terminal choice carries `"weight_versions":null`, and the role chunk
carries neither. Pure functions and value objects only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from vllm_standin.errors import chat_error_event
from vllm_standin.plan import ChoicePlan, Kind, Step

DONE = b"data: [DONE]\n\n"
KEEPALIVE_COMMENT = b": keep-alive\n\n"

_OPEN_SUFFIX = b',"logprobs":null,"finish_reason":null,"token_ids":null}]'
_FINAL_SUFFIX = b',"stop_reason":null,"token_ids":null,"weight_versions":null}]'
_KV_END = b',"kv_transfer_params":null}\n\n'
_ROLE_DELTA = b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
_EOS_PLAIN = b'{"content":""}'
_EOS_PARSED = b"{}"


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The request-wide fields every chunk repeats."""

    request_id: str
    created: int
    model: str
    fingerprint: str
    prompt_tokens: int
    include_usage: bool
    continuous_usage: bool
    reasoning_parser: bool
    parser: bool


def _usage_json(
    prompt: int, completion: int, reasoning: int | None, *, details_null: bool
) -> bytes:
    usage: dict[str, object] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    elif details_null:
        usage["completion_tokens_details"] = None
    return orjson.dumps(usage)


def delta_json(step: Step, *, parser: bool) -> bytes:
    """The `delta` object for one step, as vLLM's `DeltaMessage` dumps it."""
    kind = step.kind
    if kind is Kind.CONTENT:
        return b'{"content":' + orjson.dumps(step.text) + b"}"
    if kind is Kind.REASONING:
        return b'{"reasoning":' + orjson.dumps(step.text) + b"}"
    # Tool parsers (hermes) build `DeltaMessage(content=..., tool_calls=...)` with the
    # content explicitly None, so it is serialised as null.
    if kind is Kind.TOOL_START:
        call = {
            "id": step.call_id,
            "type": "function",
            "index": step.call_index,
            "function": {"name": step.text},
        }
        return orjson.dumps({"content": None, "tool_calls": [call]})
    if kind is Kind.TOOL_ARGS:
        call = {"index": step.call_index, "function": {"arguments": step.text}}
        return orjson.dumps({"content": None, "tool_calls": [call]})
    return _EOS_PARSED if parser else _EOS_PLAIN


class ChatStream:
    """Encodes the events of one streamed chat completion."""

    __slots__ = ("_fingerprint", "_head", "_prefixes", "_usage_prefix")

    def __init__(self, head: StreamHead, choices: int) -> None:
        self._head = head
        common = (
            b'data: {"id":'
            + orjson.dumps(head.request_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(head.created).encode()
            + b',"model":'
            + orjson.dumps(head.model)
        )
        self._prefixes = [
            common + b',"choices":[{"index":' + str(i).encode() + b',"delta":'
            for i in range(choices)
        ]
        self._usage_prefix = common + b',"choices":[],"usage":'
        self._fingerprint = b',"system_fingerprint":' + orjson.dumps(head.fingerprint)

    def _continuous(self, completion: int, reasoning: int) -> bytes:
        head = self._head
        if not head.continuous_usage:
            return b""
        details = reasoning if head.reasoning_parser else None
        usage = _usage_json(head.prompt_tokens, completion, details, details_null=True)
        return b',"usage":' + usage

    def role(self, index: int) -> bytes:
        return b"".join(
            (
                self._prefixes[index],
                _ROLE_DELTA,
                self._continuous(0, 0),
                b',"prompt_token_ids":null,"prompt_text":null}\n\n',
            )
        )

    def token(self, index: int, step: Step, completion: int, reasoning: int) -> bytes:
        """A non-final step; `completion`/`reasoning` count this choice's tokens so far."""
        return b"".join(
            (
                self._prefixes[index],
                delta_json(step, parser=self._head.parser),
                _OPEN_SUFFIX,
                self._continuous(completion, reasoning),
                _KV_END,
            )
        )

    def final(self, index: int, step: Step, plan: ChoicePlan) -> bytes:
        """The choice's last step, carrying the finish reason."""
        head = self._head
        finish = orjson.dumps(plan.finish_reason)
        return b"".join(
            (
                self._prefixes[index],
                delta_json(step, parser=head.parser),
                b',"logprobs":null,"finish_reason":',
                finish,
                _FINAL_SUFFIX,
                self._continuous(plan.completion_tokens, plan.reasoning_tokens),
                b"" if head.include_usage else self._fingerprint,
                _KV_END,
            )
        )

    def opening(self) -> list[bytes]:
        """The role chunk of every choice, sent with the first token."""
        return [self.role(i) for i in range(len(self._prefixes))]

    def event(self, plan: ChoicePlan, position: int) -> bytes:
        """The event for step `position` of `plan`."""
        step = plan.steps[position]
        if position == len(plan.steps) - 1:
            return self.final(plan.index, step, plan)
        reasoning = 0
        if self._head.continuous_usage and self._head.reasoning_parser:
            reasoning = sum(1 for s in plan.steps[: position + 1] if s.kind is Kind.REASONING)
        return self.token(plan.index, step, position + 1, reasoning)

    def closing(self, plans: Sequence[ChoicePlan]) -> list[bytes]:
        return [self.usage(plans)] if self._head.include_usage else []

    def error_events(self, message: str, err_type: str, code: int) -> list[bytes]:
        """The in-stream error: the yielded `ErrorResponse`, `model_dump_json()`."""
        return [chat_error_event(message, err_type, code)]

    @property
    def done(self) -> bytes:
        return DONE

    def preamble(self) -> list[bytes]:
        return []  # nothing before the first engine output

    def usage(self, plans: Sequence[ChoicePlan]) -> bytes:
        """The trailing `"choices":[]` usage event (`stream_options.include_usage`)."""
        head = self._head
        completion = sum(plan.completion_tokens for plan in plans)
        reasoning = sum(plan.reasoning_tokens for plan in plans) if head.reasoning_parser else None
        usage = _usage_json(head.prompt_tokens, completion, reasoning, details_null=False)
        return b"".join((self._usage_prefix, usage, self._fingerprint, b"}\n\n"))


def _message(plan: ChoicePlan, reasoning_parser: bool) -> dict[str, object]:
    calls = plan.tool_calls()
    content = plan.text(Kind.CONTENT)
    message: dict[str, object] = {
        "role": "assistant",
        "content": content if content or not (calls or reasoning_parser) else None,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ]
    message["reasoning"] = plan.text(Kind.REASONING) if reasoning_parser else None
    return message


def completion_body(head: StreamHead, plans: list[ChoicePlan]) -> bytes:
    """A non-streamed `chat.completion` body (`ChatCompletionResponse.model_dump()`)."""
    completion = sum(plan.completion_tokens for plan in plans)
    details = (
        {"reasoning_tokens": sum(plan.reasoning_tokens for plan in plans)}
        if head.reasoning_parser
        else None
    )
    return orjson.dumps(
        {
            "id": head.request_id,
            "object": "chat.completion",
            "created": head.created,
            "model": head.model,
            "choices": [
                {
                    "index": plan.index,
                    "message": _message(plan, head.reasoning_parser),
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                    "weight_versions": None,
                }
                for plan in plans
            ],
            "service_tier": None,
            "system_fingerprint": head.fingerprint,
            "usage": {
                "prompt_tokens": head.prompt_tokens,
                "total_tokens": head.prompt_tokens + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": None,
                "completion_tokens_details": details,
            },
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )
