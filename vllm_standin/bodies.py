"""Request bodies: decode JSON the way FastAPI does and validate the fields vLLM would reject.

Order of checks (FastAPI's, then vLLM's): JSON decode error → wrong content type →
body schema (object, required fields, field types, `stream_options` without
`stream`) → unknown model (404) → `n`/`max_tokens` limits. The first failure wins
and is returned as an `ApiError`; nothing here raises for bad input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson

from vllm_standin.errors import (
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    FieldError,
    api_error,
    bad_request,
    max_tokens_too_large,
    model_not_found,
    validation_error,
)
from vllm_standin.vocab import prompt_token_count

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


def _object(body: object) -> dict[str, Any] | ApiError:
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
    """A `VLLMValidationError` raised by a `mode="before"` model validator."""
    ctx: dict[str, object] = {"error": _Repr(f"VLLMValidationError({message!r})")}
    return validation_error(
        [FieldError("value_error", ("body",), f"Value error, {message}", body, ctx, param)]
    )


def _int_field(body: dict[str, Any], name: str) -> int | ApiError | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        return validation_error(
            [FieldError("int_type", ("body", name), "Input should be a valid integer", value)]
        )
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        return validation_error([FieldError("int_from_float", ("body", name), msg, value)])
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            return validation_error([FieldError("int_parsing", ("body", name), msg, value)])
    return value


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
    """The parts of a chat or completion request the stand-in acts on."""

    model: str
    prompts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: int | None
    tool_names: tuple[str, ...] = ()

    @property
    def seed_text(self) -> str:
        return "\n".join(self.prompts)

    @property
    def total_prompt_tokens(self) -> int:
        return sum(self.prompt_tokens)


@dataclass(frozen=True, slots=True)
class Limits:
    served_model: str
    max_model_len: int


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False, False
    include = bool(options.get("include_usage"))
    return include, include and bool(options.get("continuous_usage_stats"))


def _common(
    body: dict[str, Any],
    limits: Limits,
    prompts: tuple[str, ...],
    max_key: tuple[str, ...],
    default_max: int | None,
) -> GenerateRequest | ApiError:
    stream = bool(body.get("stream"))
    if body.get("stream_options") and not stream:
        return _vllm_value_error(
            body, "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return validation_error(
            [FieldError("string_type", ("body", "model"), "Input should be a valid string", model)]
        )
    n = _int_field(body, "n")
    if isinstance(n, ApiError):
        return n
    max_tokens: int | None = None
    for key in max_key:
        value = _int_field(body, key)
        if isinstance(value, ApiError):
            return value
        if value is not None:
            max_tokens = value
            break
    if max_tokens is None:
        max_tokens = default_max
    if model and model != limits.served_model:
        return model_not_found(model)
    counts = tuple(prompt_token_count(prompt) for prompt in prompts)
    if n is not None and n < 1:
        return bad_request(f"n must be at least 1, got {n}.", "n")
    if max_tokens is not None:
        if max_tokens < 1:
            return bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        if max(counts) + max_tokens > limits.max_model_len:
            return max_tokens_too_large(max_tokens, limits.max_model_len, max(counts))
    include_usage, continuous = _stream_options(body)
    return GenerateRequest(
        model=limits.served_model,
        prompts=prompts,
        prompt_tokens=counts,
        n=1 if n is None else n,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        max_tokens=max_tokens,
        tool_names=_tool_names(body.get("tools")),
    )


def parse_chat(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """A chat request (`messages` is required), or vLLM's error for it."""
    body = _object(document)
    if isinstance(body, ApiError):
        return body
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
    return _common(body, limits, (prompt,), ("max_completion_tokens", "max_tokens"), None)


def _prompts(prompt: object) -> tuple[str, ...] | None:
    if isinstance(prompt, str):
        return (prompt,) if prompt else None
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) for item in prompt):
            return (" ".join(str(item) for item in prompt),)
        if all(isinstance(item, str) for item in prompt):
            return tuple(prompt)
        if all(isinstance(item, list) for item in prompt):
            return tuple(" ".join(str(token) for token in item) for item in prompt)
    return None


COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest.max_tokens default


def parse_completion(document: object, limits: Limits) -> GenerateRequest | ApiError:
    """A completion request (`prompt` is required), or vLLM's error for it."""
    body = _object(document)
    if isinstance(body, ApiError):
        return body
    prompts = _prompts(body.get("prompt"))
    if prompts is None:
        message = "Either prompt or prompt_embeds must be provided and non-empty."
        return _vllm_value_error(body, message, "prompt")
    return _common(body, limits, prompts, ("max_tokens",), COMPLETION_DEFAULT_MAX_TOKENS)


def chat_prompt(document: dict[str, Any]) -> str:
    """The text the chat counts as its prompt (used by `/tokenize` with `messages`)."""
    messages = document.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(_message_text(message) for message in messages)
