"""Legacy completion (`text_completion`) bytes exactly as vLLM 0.33.0 serialises them.

Stream chunks are `CompletionStreamResponse.model_dump_json(exclude_unset=True)`: no
role chunk, one choice per event, every choice field passed explicitly (so
`"weight_versions":null` on every chunk) and `"kv_transfer_params":null` last; the
usage event is dumped with `exclude_unset=False, exclude_none=True`. Choice `index`
is `output_index + prompt_index * n`. Pre-encoded prefixes keep the per-token cost
to one `orjson.dumps` and one join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from vllm_standin.chat_wire import DONE
from vllm_standin.errors import completion_error_event
from vllm_standin.plan import ChoicePlan, Kind, Step

_OPEN_SUFFIX = (
    b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
    b'"prompt_token_ids":null,"token_ids":null,"weight_versions":null}]'
)
_FINAL_SUFFIX = (
    b',"stop_reason":null,"prompt_token_ids":null,"token_ids":null,"weight_versions":null}]'
)
_KV_END = b',"kv_transfer_params":null}\n\n'


@dataclass(frozen=True, slots=True)
class CompletionHead:
    request_id: str
    created: int
    model: str
    fingerprint: str
    prompt_tokens: tuple[int, ...]
    n: int
    include_usage: bool
    continuous_usage: bool

    def prompt_of(self, index: int) -> int:
        """Prompt tokens of the prompt that choice `index` answers."""
        return self.prompt_tokens[index // self.n]


def _usage(prompt: int, completion: int) -> bytes:
    return orjson.dumps(
        {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
    )


def step_text(step: Step) -> str:
    return "" if step.kind is Kind.EOS else step.text


class CompletionStream:
    """Encodes the events of one streamed completion."""

    __slots__ = ("_fingerprint", "_head", "_prefixes", "_usage_prefix")

    def __init__(self, head: CompletionHead) -> None:
        self._head = head
        common = (
            b'data: {"id":'
            + orjson.dumps(head.request_id)
            + b',"object":"text_completion","created":'
            + str(head.created).encode()
            + b',"model":'
            + orjson.dumps(head.model)
        )
        count = head.n * len(head.prompt_tokens)
        self._prefixes = [
            common + b',"choices":[{"index":' + str(i).encode() + b',"text":' for i in range(count)
        ]
        self._usage_prefix = common + b',"choices":[],"usage":'
        self._fingerprint = b',"system_fingerprint":' + orjson.dumps(head.fingerprint)

    def _continuous(self, index: int, completion: int) -> bytes:
        if not self._head.continuous_usage:
            return b""
        return b',"usage":' + _usage(self._head.prompt_of(index), completion)

    def token(self, index: int, step: Step, completion: int) -> bytes:
        return b"".join(
            (
                self._prefixes[index],
                orjson.dumps(step_text(step)),
                _OPEN_SUFFIX,
                self._continuous(index, completion),
                _KV_END,
            )
        )

    def final(self, index: int, step: Step, plan: ChoicePlan) -> bytes:
        head = self._head
        return b"".join(
            (
                self._prefixes[index],
                orjson.dumps(step_text(step)),
                b',"logprobs":null,"finish_reason":',
                orjson.dumps(plan.finish_reason),
                _FINAL_SUFFIX,
                self._continuous(index, plan.completion_tokens),
                b"" if head.include_usage else self._fingerprint,
                _KV_END,
            )
        )

    def opening(self) -> list[bytes]:
        return []  # completions have no role chunk

    def event(self, plan: ChoicePlan, position: int) -> bytes:
        step = plan.steps[position]
        if position == len(plan.steps) - 1:
            return self.final(plan.index, step, plan)
        return self.token(plan.index, step, position + 1)

    def closing(self, plans: Sequence[ChoicePlan]) -> list[bytes]:
        return [self.usage(plans)] if self._head.include_usage else []

    def error_events(self, message: str, err_type: str, code: int) -> list[bytes]:
        """The in-stream error: `create_streaming_error_response`, i.e. `json.dumps`."""
        return [completion_error_event(message, err_type, code)]

    @property
    def done(self) -> bytes:
        return DONE

    def preamble(self) -> list[bytes]:
        return []  # nothing before the first engine output

    def usage(self, plans: Sequence[ChoicePlan]) -> bytes:
        prompt = sum(self._head.prompt_tokens)
        completion = sum(plan.completion_tokens for plan in plans)
        return b"".join(
            (self._usage_prefix, _usage(prompt, completion), self._fingerprint, b"}\n\n")
        )


def completion_body(head: CompletionHead, plans: list[ChoicePlan]) -> bytes:
    """A non-streamed `text_completion` body (`CompletionResponse.model_dump()`)."""
    prompt = sum(head.prompt_tokens)
    completion = sum(plan.completion_tokens for plan in plans)
    return orjson.dumps(
        {
            "id": head.request_id,
            "object": "text_completion",
            "created": head.created,
            "model": head.model,
            "choices": [
                {
                    "index": plan.index,
                    "text": plan.text(Kind.CONTENT),
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                    "weight_versions": None,
                }
                for plan in plans
            ],
            "service_tier": None,
            "system_fingerprint": head.fingerprint,
            "usage": {
                "prompt_tokens": prompt,
                "total_tokens": prompt + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )
