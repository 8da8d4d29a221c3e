"""What one request will generate, decided up front: the token steps of every choice.

A choice's "model output" is a sequence of steps, one per generated token:
reasoning words, then tool-call pieces or content words, then the EOS token.
`max_tokens` cuts the sequence; the finish reason follows from where it was cut,
exactly as vLLM reports it:

| cut | finish_reason |
| --- | --- |
| EOS reached, tool calls were emitted | `tool_calls` |
| EOS reached otherwise | `stop` |
| `max_tokens` reached before EOS | `length` |

The EOS step counts as a completion token (vLLM counts it) and decodes to "".
Everything here is pure and deterministic in the prompt text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum

from vllm_standin.vocab import as_tokens, pick_words

DEFAULT_TOOL_NAMES = ("get_weather", "get_time")
TOOL_ARG_KEYS = ("city", "timezone")


class Kind(Enum):
    REASONING = "reasoning"
    CONTENT = "content"
    TOOL_START = "tool_start"
    TOOL_ARGS = "tool_args"
    EOS = "eos"


@dataclass(frozen=True, slots=True)
class Step:
    """One generated token: its kind, its text, and for tool pieces the call it belongs to."""

    kind: Kind
    text: str = ""
    call_index: int = 0
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    index: int
    steps: tuple[Step, ...]
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.steps)

    @property
    def reasoning_tokens(self) -> int:
        return sum(1 for step in self.steps if step.kind is Kind.REASONING)

    @property
    def has_tool_calls(self) -> bool:
        return any(step.kind is Kind.TOOL_START for step in self.steps)

    def text(self, kind: Kind) -> str:
        return "".join(step.text for step in self.steps if step.kind is kind)

    def tool_calls(self) -> list[ToolCall]:
        """The calls as a non-streamed message carries them (arguments joined)."""
        calls: dict[int, ToolCall] = {}
        for step in self.steps:
            if step.kind is Kind.TOOL_START:
                calls[step.call_index] = ToolCall(step.call_id, step.text, "")
            elif step.kind is Kind.TOOL_ARGS:
                call = calls[step.call_index]
                calls[step.call_index] = ToolCall(
                    call.call_id, call.name, call.arguments + step.text
                )
        return [calls[i] for i in sorted(calls)]


@dataclass(frozen=True, slots=True)
class Shape:
    """What the answer contains, before `max_tokens` cuts it."""

    content_tokens: int
    reasoning: bool = False
    tool_names: tuple[str, ...] = ()


def tool_call_id(seed_text: str, choice: int, call: int) -> str:
    digest = hashlib.sha256(f"tool\x00{choice}\x00{call}\x00{seed_text}".encode()).hexdigest()
    return f"chatcmpl-tool-{digest[:16]}"


def _argument_fragments(arguments: str) -> list[str]:
    """Split `{"key": "value"}` the way a tool parser streams it: key, value, closing."""
    start = arguments.index(": ") + 2
    end = len(arguments) - 2
    return [arguments[:start], arguments[start:end], arguments[end:]]


def _tool_steps(seed_text: str, choice: int, names: tuple[str, ...]) -> list[Step]:
    steps: list[Step] = []
    values = pick_words(seed_text, f"tool-args-{choice}", len(names))
    for call, (name, value) in enumerate(zip(names, values, strict=True)):
        call_id = tool_call_id(seed_text, choice, call)
        key = TOOL_ARG_KEYS[call % len(TOOL_ARG_KEYS)]
        arguments = json.dumps({key: value.capitalize()}, ensure_ascii=False)
        steps.append(Step(Kind.TOOL_START, name, call, call_id))
        steps.extend(Step(Kind.TOOL_ARGS, part, call) for part in _argument_fragments(arguments))
    return steps


def _full_steps(seed_text: str, choice: int, shape: Shape) -> list[Step]:
    steps: list[Step] = []
    if shape.reasoning:
        count = max(2, shape.content_tokens // 2)
        words = pick_words(seed_text, f"reasoning-{choice}", count)
        steps.extend(Step(Kind.REASONING, token) for token in as_tokens(words))
    if shape.tool_names:
        steps.extend(_tool_steps(seed_text, choice, shape.tool_names))
    else:
        words = pick_words(seed_text, f"content-{choice}", shape.content_tokens)
        steps.extend(Step(Kind.CONTENT, token) for token in as_tokens(words))
    steps.append(Step(Kind.EOS))
    return steps


def plan_choice(seed_text: str, choice: int, shape: Shape, max_tokens: int | None) -> ChoicePlan:
    """The steps of choice `choice`, cut at `max_tokens`, with vLLM's finish reason."""
    steps = _full_steps(seed_text, choice, shape)
    if max_tokens is not None and max_tokens < len(steps):
        return ChoicePlan(choice, tuple(steps[:max_tokens]), "length")
    tools = any(step.kind is Kind.TOOL_START for step in steps)
    return ChoicePlan(choice, tuple(steps), "tool_calls" if tools else "stop")
