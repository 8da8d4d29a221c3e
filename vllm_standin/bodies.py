"""Request bodies: decode JSON the way FastAPI does and validate the fields vLLM would reject.

Order of checks (FastAPI's, then vLLM 0.33.0's): JSON decode error → wrong content
type → body schema (object; the `mode="before"` model validators, which pydantic runs
last-defined first — `stream_options` without `stream` for chat, the prompt check then
`stream_options` for completions; required fields; field types) → unknown model (404)
→ `TokenizeParams` (output tokens above the context, then a prompt longer than the
context) → `SamplingParams` (`n` ≥ 1, then the effective `max_tokens` ≥ 1). The first
failure wins and is returned as an `ApiError`; nothing here raises for bad input.

`max_tokens` is clamped, not refused, when prompt + `max_tokens` exceeds the context
(`get_max_tokens` takes the minimum with `max_model_len - prompt`); a chat request
without a limit may generate up to the rest of the context.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson

from vllm_standin.errors import (
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    FieldError,
    api_error,
    max_tokens_above_context,
    model_not_found,
    prompt_too_long,
    validation_error,
    vllm_error_text,
    vllm_validation_error,
)
from vllm_standin.vocab import prompt_token_count

# pydantic's lax int from a string (ASCII digits only; `_` between digits; `.0…` allowed).
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
# pydantic refuses a float at or above 2**63 in magnitude (int_parsing_size), and a
# string of more significant digits than this.
_INT_FROM_FLOAT_LIMIT = 2.0**63
_MAX_INT_DIGITS = 4300

_MISSING = object()


class _Repr:
    """A value whose `repr()` is given text (for rendering exception objects in `ctx`)."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def _is_json_media(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI parses a body without content type as JSON
    message = Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def decode_json(raw: bytes, content_type: str | None) -> object | ApiError:
    """The JSON document, or the error vLLM answers for this body and content type."""
    body: object = _MISSING
    if raw and _is_json_media(content_type):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = _python_json(raw)
            if isinstance(body, ApiError):
                return body
    media_type = (content_type or "").lower().split(";", maxsplit=1)[0]
    if media_type != "application/json":
        return validation_error([UNSUPPORTED_MEDIA_TYPE])
    if body is _MISSING:
        return validation_error([FieldError("missing", ("body",), "Field required", None)])
    return body


def _python_json(raw: bytes) -> object | ApiError:
    """Starlette's `json.loads`, which accepts what orjson refuses (NaN) and errs like FastAPI."""
    try:
        document: object = json.loads(raw)
    except json.JSONDecodeError as exc:
        ctx: dict[str, object] = {"error": exc.msg}
        return validation_error(
            [FieldError("json_invalid", ("body", exc.pos), "JSON decode error", {}, ctx)]
        )
    except ValueError:
        return api_error("There was an error parsing the body", "Bad Request", 400)
    return document


def require_object(body: object) -> dict[str, Any] | ApiError:
    if isinstance(body, dict):
        return body
    return validation_error(
        [
            FieldError(
                "model_attributes_type",
                ("body",),
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        ]
    )


def _vllm_value_error(body: dict[str, Any], message: str, param: str) -> ApiError:
    """A `VLLMValidationError` raised by a `mode="before"` model validator.

    pydantic's message is `"Value error, " + str(exc)`, which carries the
    `(parameter=...)` suffix; `ctx` shows `repr(exc)`, which does not.
    """
    ctx: dict[str, object] = {"error": _Repr(f"VLLMValidationError({message!r})")}
    text = f"Value error, {vllm_error_text(message, param)}"
    return validation_error([FieldError("value_error", ("body",), text, body, ctx, param)])


def _int_field(body: dict[str, Any], name: str) -> int | ApiError | None:
    """An `int | None` field as pydantic v2 reads JSON in lax mode (vLLM's request models):
    true/false are 1/0, an integral float is its int, a string is stripped and read as an
    ASCII integer with optional sign, `_` separators and a `.0…` tail."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int):
        return int(value)  # bool included: True is 1
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN/Infinity: Python's json.loads (FastAPI's) reads them
            msg = "Input should be a finite number"
            return validation_error([FieldError("finite_number", ("body", name), msg, value)])
        if abs(value) >= _INT_FROM_FLOAT_LIMIT:
            msg = "Unable to parse input string as an integer, exceeded maximum size"
            return validation_error([FieldError("int_parsing_size", ("body", name), msg, value)])
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        return validation_error([FieldError("int_from_float", ("body", name), msg, value)])
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            digits = text.lstrip("+-").split(".", 1)[0].replace("_", "").lstrip("0") or "0"
            if len(digits) <= _MAX_INT_DIGITS:
                return -int(digits) if text.startswith("-") else int(digits)
            if "_" not in text:
                msg = "Unable to parse input string as an integer, exceeded maximum size"
                return validation_error(
                    [FieldError("int_parsing_size", ("body", name), msg, value)]
                )
        msg = "Input should be a valid integer, unable to parse string as an integer"
        return validation_error([FieldError("int_parsing", ("body", name), msg, value)])
    return validation_error(
        [FieldError("int_type", ("body", name), "Input should be a valid integer", value)]
    )


def _message_text(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tool_names(tools: object) -> tuple[str, ...]:
    if not isinstance(tools, list):
        return ()
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return tuple(names)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """The parts of a chat or completion request the stand-in acts on.

    `max_tokens` holds, per prompt, the limit vLLM samples with (the requested one
    clamped to what the context leaves); `request_id` is the body's `request_id`, if
    it sent one.
    """

    model: str
    prompts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: tuple[int, ...]
    tool_names: tuple[str, ...] = ()
    request_id: str | None = None

    @property
    def seed_text(self) -> str:
        return "\n".join(self.prompts)

    @property
    def total_prompt_tokens(self) -> int:
        return sum(self.prompt_tokens)


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-wide facts a request is checked against; `force_include_usage` is vLLM's
    `--enable-force-include-usage` (usage and continuous usage on every stream)."""

    served_model: str
    max_model_len: int
    force_include_usage: bool = False


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one endpoint reads its limits: the output-token fields and their default."""

    max_keys: tuple[str, ...]
    default_max: int | None
    token_prompts: bool = False  # prompts given as token ids: exact length in errors
    openai: bool = True  # chat/completions: the force-include-usage flag applies


_CHAT = _Kind(("max_completion_tokens", "max_tokens"), None)


_TRUE = frozenset({"1", "t", "y", "on", "yes", "true"})


def _lax_true(value: Any) -> bool:
    """True where pydantic's lax `bool` gives True (vLLM's `stream: bool | None`,
    `StreamOptions.include_usage`): true, 1, 1.0 and the words t/y/on/yes/true in any
    case, "1". Values it rejects never reach here in a valid request."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and (value == "1" or value.lower() in _TRUE)


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    # vLLM serve/utils/api_utils.py:273-285 should_include_usage
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False, False
    include = _lax_true(options.get("include_usage"))
    return include, include and _lax_true(options.get("continuous_usage_stats"))


def _stream_options_error(body: dict[str, Any]) -> ApiError | None:
    if body.get("stream_options") and not body.get("stream"):
        message = "Stream options can only be defined when `stream=True`."
        return _vllm_value_error(body, message, "stream_options")
    return None


def _string_field(body: dict[str, Any], name: str) -> str | ApiError | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    return validation_error(
        [FieldError("string_type", ("body", name), "Input should be a valid string", value)]
    )


def _requested_max(body: dict[str, Any], kind: _Kind) -> tuple[str, int | None] | ApiError:
    """The output-token limit the client asked for, and the field vLLM names in errors."""
    for key in kind.max_keys:
        value = _int_field(body, key)
        if isinstance(value, ApiError):
            return value
        if value is not None:
            return key, value
    return kind.max_keys[-1], kind.default_max


def _common(
    body: dict[str, Any], limits: Limits, prompts: tuple[str, ...], kind: _Kind
) -> GenerateRequest | ApiError:
    model = _string_field(body, "model")
    if isinstance(model, ApiError):
        return model
    request_id = _string_field(body, "request_id")
    if isinstance(request_id, ApiError):
        return request_id
    n = _int_field(body, "n")
    if isinstance(n, ApiError):
        return n
    requested = _requested_max(body, kind)
    if isinstance(requested, ApiError):
        return requested
    if model and model != limits.served_model:
        return model_not_found(model, limits.served_model)
    max_key, max_tokens = requested
    context = limits.max_model_len
    if max_tokens is not None and max_tokens > context:
        return max_tokens_above_context(max_key, max_tokens, context)
    counts = tuple(prompt_token_count(prompt) for prompt in prompts)
    for count in counts:
        if count > context:
            reported = count if kind.token_prompts else context + 1
            return prompt_too_long(reported, context, at_least=not kind.token_prompts)
    if n is not None and n < 1:
        return vllm_validation_error(f"n must be at least 1, got {n}.")
    effective = tuple(
        context - count if max_tokens is None else min(max_tokens, context - count)
        for count in counts
    )
    for value in effective:
        if value < 1:
            message = f"max_tokens must be at least 1, got {value}."
            return vllm_validation_error(message, "max_tokens", value)
    # vLLM serve/utils/api_utils.py:273-285: the server flag wins over stream_options
    include_usage, continuous = (
        (True, True) if limits.force_include_usage and kind.openai else _stream_options(body)
    )
    return GenerateRequest(
        model=limits.served_model,
        prompts=prompts,
        prompt_tokens=counts,
        n=1 if n is None else n,
        stream=_lax_true(body.get("stream")),
        include_usage=include_usage,
        continuous_usage=continuous,
        max_tokens=effective,
        tool_names=_tool_names(body.get("tools")),
        request_id=request_id,
    )


def parse_chat(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """A chat request (`messages` is required), or vLLM's error for it."""
    body = require_object(document)
    if isinstance(body, ApiError):
        return body
    error = _stream_options_error(body)
    if error is not None:
        return error
    messages = body.get("messages", _MISSING)
    if messages is _MISSING:
        return validation_error(
            [FieldError("missing", ("body", "messages"), "Field required", body)]
        )
    if not isinstance(messages, list):
        return validation_error(
            [
                FieldError(
                    "list_type", ("body", "messages"), "Input should be a valid list", messages
                )
            ]
        )
    prompt = "\n".join(_message_text(message) for message in messages)
    return _common(body, limits, (prompt,), _CHAT)


def _prompts(prompt: object) -> tuple[tuple[str, ...], bool] | None:
    """The prompt texts, and whether they were given as token ids."""
    if isinstance(prompt, str):
        return ((prompt,), False) if prompt else None
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) for item in prompt):
            return (" ".join(str(item) for item in prompt),), True
        if all(isinstance(item, str) for item in prompt):
            return tuple(prompt), False
        if all(isinstance(item, list) for item in prompt):
            return tuple(" ".join(str(token) for token in item) for item in prompt), True
    return None


COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest.max_tokens default


def parse_completion(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """A completion request (`prompt` is required), or vLLM's error for it."""
    body = require_object(document)
    if isinstance(body, ApiError):
        return body
    parsed = _prompts(body.get("prompt"))
    if parsed is None:
        message = "Either prompt or prompt_embeds must be provided and non-empty."
        return _vllm_value_error(body, message, "prompt")
    error = _stream_options_error(body)
    if error is not None:
        return error
    prompts, token_prompts = parsed
    kind = _Kind(("max_tokens",), COMPLETION_DEFAULT_MAX_TOKENS, token_prompts)
    return _common(body, limits, prompts, kind)


def chat_prompt(document: dict[str, Any]) -> str:
    """The text the chat counts as its prompt (used by `/tokenize` with `messages`)."""
    messages = document.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(_message_text(message) for message in messages)


_MESSAGES = _Kind(("max_tokens",), None, openai=False)
_RESPONSES = _Kind(("max_output_tokens",), None, openai=False)


def _missing(body: dict[str, Any], *names: str) -> ApiError | None:
    errors: list[FieldError | str] = [
        FieldError("missing", ("body", name), "Field required", body)
        for name in names
        if name not in body
    ]
    return validation_error(errors) if errors else None


def parse_messages(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """An Anthropic Messages request (`model`, `messages`, `max_tokens` required;
    `anthropic/protocol.py:240-340`), or vLLM's error for it. The prompt is the system
    text and the messages' text; `max_tokens` must be positive (a field validator)."""
    body = require_object(document)
    if isinstance(body, ApiError):
        return body
    missing = _missing(body, "model", "messages", "max_tokens")
    if missing is not None:
        return missing
    messages = body["messages"]
    if not isinstance(messages, list):
        error = FieldError(
            "list_type", ("body", "messages"), "Input should be a valid list", messages
        )
        return validation_error([error])
    max_tokens = _int_field(body, "max_tokens")
    if isinstance(max_tokens, ApiError):
        return max_tokens
    if max_tokens is not None and max_tokens <= 0:
        ctx: dict[str, object] = {"error": _Repr("ValueError('max_tokens must be positive')")}
        error = FieldError(
            "value_error",
            ("body", "max_tokens"),
            "Value error, max_tokens must be positive",
            body["max_tokens"],
            ctx,
        )
        return validation_error([error])
    system = body.get("system")
    texts = [_message_text({"content": system})] if system is not None else []
    texts.extend(_message_text(message) for message in messages)
    # Fields the Anthropic model does not have are ignored by pydantic, not read.
    plain = {k: v for k, v in body.items() if k not in ("stream_options", "n", "request_id")}
    return _common(plain, limits, ("\n".join(texts),), _MESSAGES)


def _input_text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        return "\n".join(_message_text(item) for item in raw)
    return ""


def parse_responses(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """A Responses request (`input` required; `openai/responses/protocol.py:240-360`),
    or vLLM's error for it; `max_output_tokens` bounds the answer."""
    body = require_object(document)
    if isinstance(body, ApiError):
        return body
    missing = _missing(body, "input")
    if missing is not None:
        return missing
    plain = {key: value for key, value in body.items() if key not in ("stream_options", "n")}
    return _common(plain, limits, (_input_text(body["input"]),), _RESPONSES)
