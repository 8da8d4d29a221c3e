"""Reassemble a streamed answer from vLLM's chunk payloads, per choice. Pure, incremental.

`StreamAssembler.add(payload)` takes the `data` of one SSE event (bytes) and
folds it in; `result()` gives plain data for the audit record:

- chat chunks (`delta`): content, reasoning (`reasoning_content`, or `reasoning`
  in newer vLLM releases), tool-call deltas merged by their `index` into
  complete calls (id, type and name from the first delta that has them,
  `arguments` concatenated), finish reason;
- completion chunks (`text`): text and finish reason;
- Responses API events (`/v1/responses`, `type: "response.…"`): output text,
  reasoning text and function calls of all output items folded into choice 0,
  the final status as finish reason, usage and model from the terminal
  `response.completed` / `.incomplete` / `.failed` event;
- Anthropic Messages events (`/v1/messages`, `event:` + `data:` lines, no
  `[DONE]`): `content_block_start` opens a text, thinking or tool_use block,
  `content_block_delta` adds `text_delta` to the content, `thinking_delta` to the
  reasoning and `input_json_delta` to the block's tool call (its arguments),
  `message_delta` carries the stop reason (the finish reason) and the final usage,
  `message_start` the model; all into choice 0;
- the last non-null `usage`, the `model`, and a mid-stream `{"error": ...}` or
  `{"type": "error", "error": ...}` event;
- whether the stream's terminal event came (`terminal_seen`: `[DONE]`,
  `response.completed`/`.incomplete`/`.failed`, `message_stop`), and which API
  the stream spoke (`api`: `openai`, `responses`, `messages`).

Text is kept up to `max_chars` per field and choice; beyond that the field is
cut and `truncated` is set, so memory is bounded whatever the stream's length.
Anything that is not valid JSON (or `[DONE]`) is counted and otherwise ignored:
capture never fails an exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

DONE = b"[DONE]"
_MESSAGES_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "ping"})


@dataclass
class _Text:
    """An append-only text with a size cap."""

    parts: list[str] = field(default_factory=list)
    size: int = 0
    seen: bool = False

    def add(self, piece: str, cap: int) -> bool:
        """Append; returns True when something had to be cut."""
        self.seen = True
        room = cap - self.size
        if room <= 0:
            return bool(piece)
        if len(piece) > room:
            self.parts.append(piece[:room])
            self.size = cap
            return True
        self.parts.append(piece)
        self.size += len(piece)
        return False

    def value(self) -> str | None:
        return "".join(self.parts) if self.seen else None


@dataclass
class _ToolCall:
    index: int
    id: str | None = None
    type: str | None = None
    name: str = ""
    arguments: _Text = field(default_factory=_Text)


@dataclass
class _Choice:
    index: int
    content: _Text = field(default_factory=_Text)
    reasoning: _Text = field(default_factory=_Text)
    text: _Text = field(default_factory=_Text)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    is_chat: bool = False


class StreamAssembler:
    """Folds SSE payloads into the per-choice answer; see the module docstring."""

    def __init__(self, max_chars: int) -> None:
        self._cap = max_chars
        self._choices: dict[int, _Choice] = {}
        self.events = 0
        self.invalid_events = 0
        self.done = False
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.error: Any = None
        self.truncated = False
        self.has_output = False
        self.terminal_seen = False
        self.api: str | None = None
        self._blocks: dict[int, str] = {}

    def add(self, payload: bytes) -> None:
        self.events += 1
        if payload == DONE:
            self.done = self.terminal_seen = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.invalid_events += 1
            return
        if not isinstance(chunk, dict):
            self.invalid_events += 1
            return
        kind = chunk.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            self.api = "responses"
            self._add_responses_event(kind, chunk)
            return
        if isinstance(kind, str) and (kind in _MESSAGES_EVENTS or kind.startswith("content_block")):
            self.api = "messages"
            self._add_messages_event(kind, chunk)
            return
        if self.api is None and "choices" in chunk:
            self.api = "openai"
        if "error" in chunk:
            self.error = chunk["error"]
        model = chunk.get("model")
        if isinstance(model, str):
            self.model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._add_choice(choice)

    def _add_choice(self, raw: dict[str, Any]) -> None:
        index = raw.get("index", 0)
        if not isinstance(index, int):
            index = 0
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice(index)
        if raw.get("finish_reason"):
            choice.finish_reason = raw["finish_reason"]
        cap = self._cap
        delta = raw.get("delta")
        if isinstance(delta, dict):
            choice.is_chat = True
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.truncated |= choice.content.add(content, cap)
                self.has_output = True
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.truncated |= choice.reasoning.add(reasoning, cap)
                self.has_output = True
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for call in tool_calls:
                    if isinstance(call, dict):
                        self._add_tool_call(choice, call)
        text = raw.get("text")
        if isinstance(text, str):
            if text:
                self.has_output = True
            self.truncated |= choice.text.add(text, cap)

    def _add_responses_event(self, kind: str, event: dict[str, Any]) -> None:
        choice = self._choices.get(0)
        if choice is None:
            choice = self._choices[0] = _Choice(0, is_chat=True)
        delta = event.get("delta")
        if kind == "response.output_text.delta" and isinstance(delta, str):
            self.truncated |= choice.content.add(delta, self._cap)
            self.has_output = True
        elif kind == "response.reasoning_text.delta" and isinstance(delta, str):
            self.truncated |= choice.reasoning.add(delta, self._cap)
            self.has_output = True
        elif kind in ("response.output_item.added", "response.function_call_arguments.delta"):
            index = event.get("output_index")
            item = event.get("item")
            if not isinstance(index, int):
                return
            if isinstance(item, dict) and item.get("type") != "function_call":
                return
            if isinstance(item, dict):
                call = {
                    "index": index,
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name")},
                }
                self._add_tool_call(choice, call)
            elif isinstance(delta, str):
                self._add_tool_call(choice, {"index": index, "function": {"arguments": delta}})
        elif kind == "response.error" or kind == "error":
            self.error = event.get("error", event)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.terminal_seen = True
            response = event.get("response")
            if isinstance(response, dict):
                if isinstance(response.get("usage"), dict):
                    self.usage = response["usage"]
                if isinstance(response.get("model"), str):
                    self.model = response["model"]
                if isinstance(response.get("status"), str):
                    choice.finish_reason = response["status"]
                if response.get("error") is not None:
                    self.error = response["error"]

    def _add_messages_event(self, kind: str, event: dict[str, Any]) -> None:
        choice = self._choices.get(0)
        if choice is None:
            choice = self._choices[0] = _Choice(0, is_chat=True)
        index = event.get("index")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
                if isinstance(message.get("usage"), dict):
                    self.usage = message["usage"]
        elif kind == "content_block_start" and isinstance(index, int):
            block = event.get("content_block")
            if isinstance(block, dict) and isinstance(block.get("type"), str):
                self._blocks[index] = block["type"]
                if block["type"] == "tool_use":
                    call = {"index": index, "id": block.get("id"), "type": "function"}
                    call["function"] = {"name": block.get("name")}
                    self._add_tool_call(choice, call)
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                return
            dtype = delta.get("type")
            if dtype == "text_delta" and isinstance(delta.get("text"), str):
                self.truncated |= choice.content.add(delta["text"], self._cap)
                self.has_output = True
            elif dtype == "thinking_delta" and isinstance(delta.get("thinking"), str):
                self.truncated |= choice.reasoning.add(delta["thinking"], self._cap)
                self.has_output = True
            elif dtype == "input_json_delta" and isinstance(index, int):
                partial = delta.get("partial_json")
                if isinstance(partial, str):
                    arguments = {"index": index, "function": {"arguments": partial}}
                    self._add_tool_call(choice, arguments)
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                choice.finish_reason = delta["stop_reason"]
            if isinstance(event.get("usage"), dict):
                self.usage = {**(self.usage or {}), **event["usage"]}
        elif kind == "message_stop":
            self.terminal_seen = True
        elif kind == "error":
            self.error = event.get("error", event)

    def _add_tool_call(self, choice: _Choice, raw: dict[str, Any]) -> None:
        index = raw.get("index", len(choice.tool_calls))
        if not isinstance(index, int):
            index = len(choice.tool_calls)
        call = choice.tool_calls.get(index)
        if call is None:
            call = choice.tool_calls[index] = _ToolCall(index)
        self.has_output = True
        if raw.get("id"):
            call.id = raw["id"]
        if raw.get("type"):
            call.type = raw["type"]
        function = raw.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str) and name and name != call.name:
                call.name = name if not call.name else call.name + name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                self.truncated |= call.arguments.add(arguments, self._cap)

    def result(self) -> list[dict[str, Any]]:
        """The answer per choice, ordered by index, as plain data for the record."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            item: dict[str, Any] = {"index": index}
            if choice.is_chat:
                item["content"] = choice.content.value()
                item["reasoningContent"] = choice.reasoning.value()
                item["toolCalls"] = [
                    {
                        "index": call.index,
                        "id": call.id,
                        "type": call.type or "function",
                        "function": {"name": call.name, "arguments": call.arguments.value() or ""},
                    }
                    for call in (choice.tool_calls[i] for i in sorted(choice.tool_calls))
                ]
            else:
                item["text"] = choice.text.value() or ""
            item["finishReason"] = choice.finish_reason
            out.append(item)
        return out
