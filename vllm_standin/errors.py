"""vLLM's error bodies, byte for byte: the `ErrorResponse` JSON, request-validation
messages, FastAPI's `{"detail": ...}` and the in-stream error events.

Invariants: JSON bodies are compact with UTF-8 unescaped (Starlette `JSONResponse`);
key order is always message, type, param, code. The in-stream error event differs by
endpoint, as in vLLM 0.33.0: chat streams yield the `ErrorResponse` and serialise it
with pydantic's `model_dump_json()` (compact), completion streams use
`create_streaming_error_response`, i.e. `json.dumps` with its defaults (spaces, ASCII
escapes). A `VLLMValidationError` reaches clients through `str(exc)`, which appends
`(parameter=..., value=...)` to the message (`vllm_error_text`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import orjson

_MAX_REPORTED_ERRORS = 10
_MAX_ERROR_INPUT_CHARS = 200
_MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error response: HTTP status and the `ErrorResponse` body."""

    status: int
    body: bytes


def error_info(
    message: str, err_type: str, code: int, param: str | None = None
) -> dict[str, object]:
    return {"message": message, "type": err_type, "param": param, "code": code}


def api_error(message: str, err_type: str, code: int, param: str | None = None) -> ApiError:
    """`ErrorResponse` as `create_error_response` builds it; status equals `code`."""
    return ApiError(code, orjson.dumps({"error": error_info(message, err_type, code, param)}))


def bad_request(message: str, param: str | None = None) -> ApiError:
    return api_error(message, "BadRequestError", HTTPStatus.BAD_REQUEST, param)


def vllm_error_text(message: str, parameter: str | None = None, value: object = None) -> str:
    """`str()` of a `VLLMValidationError`: the message plus `(parameter=..., value=...)`."""
    extras = []
    if parameter is not None:
        extras.append(f"parameter={parameter}")
    if value is not None:
        extras.append(f"value={value}")
    return f"{message} ({', '.join(extras)})" if extras else message


def vllm_validation_error(
    message: str, parameter: str | None = None, value: object = None
) -> ApiError:
    """A `VLLMValidationError` raised while serving, as `create_error_response` maps it."""
    return bad_request(vllm_error_text(message, parameter, value), parameter)


def model_not_found(model: str, served_model: str) -> ApiError:
    """`_check_model`'s answer for a model name the server does not serve."""
    message = f"The model `{model}` does not exist. Valid aliases: {served_model}."
    return api_error(message, "NotFoundError", HTTPStatus.NOT_FOUND, "model")


def max_tokens_above_context(param: str, max_tokens: int, max_model_len: int) -> ApiError:
    """`TokenizeParams`: more output tokens requested than the whole context holds."""
    return vllm_validation_error(
        f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. "
        "Please request fewer output tokens.",
        param,
        max_tokens,
    )


def prompt_too_long(reported_tokens: int, max_model_len: int, *, at_least: bool) -> ApiError:
    """`TokenizeParams._token_len_check`: the prompt alone exceeds the context.

    Text prompts are tokenized with truncation at `max_model_len + 1`, so vLLM can only
    say "at least" that many; token-id prompts report their exact length.
    """
    qualifier = "at least " if at_least else ""
    return vllm_validation_error(
        f"This model's maximum context length is {max_model_len} tokens. However, your "
        f"prompt contains {qualifier}{reported_tokens} input tokens, which exceeds this "
        "limit even without any output tokens. Please reduce the length of the input "
        "prompt.",
        "input_tokens",
        reported_tokens,
    )


QUEUE_OVERFLOW = (
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance."
)


def scenario_error(status: int, model: str, max_model_len: int, api: str) -> ApiError:
    """The error the `http_error` scenario sends: a realistic vLLM error for `status`.

    `api` names the endpoint as vLLM's "does not support" message does
    (`Chat Completions` or `Completions`).
    """
    if status == HTTPStatus.BAD_REQUEST:
        return max_tokens_above_context("max_tokens", max_model_len + 1, max_model_len)
    if status == HTTPStatus.NOT_FOUND:
        return model_not_found(f"{model}-unknown", model)
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return api_error("Internal server error", "InternalServerError", status)
    if status == HTTPStatus.NOT_IMPLEMENTED:
        message = f"The model does not support {api} API"
        return api_error(message, "NotImplementedError", status)
    # QueueOverflowError, a GracefulHTTPError: the type is the HTTP phrase.
    return api_error(QUEUE_OVERFLOW, HTTPStatus(status).phrase, status)


def chat_error_event(message: str, err_type: str, code: int) -> bytes:
    """The event a chat stream sends when it fails after its 200 went out (compact JSON)."""
    payload = orjson.dumps({"error": error_info(message, err_type, code)})
    return b"data: " + payload + b"\n\n"


def completion_error_event(message: str, err_type: str, code: int) -> bytes:
    """The same for a completion stream: `json.dumps` with its default separators."""
    payload = json.dumps({"error": error_info(message, err_type, code)})
    return f"data: {payload}\n\n".encode()


GENERATION_ERROR = ("Internal server error", "InternalServerError", 500)
"""`GenerationError` (engine `finish_reason == "error"`): message, type, code."""


def detail_body(detail: str) -> bytes:
    """FastAPI's default `HTTPException` body (unknown route, wrong method)."""
    return orjson.dumps({"detail": detail})


# --- request validation (FastAPI RequestValidationError → vLLM's handler) ----------------


def summarize_input(value: object) -> object:
    """vLLM's size-bounded stand-in for a validation error's `input` value."""
    if isinstance(value, str):
        if len(value) > _MAX_ERROR_INPUT_CHARS:
            return value[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"
        return value
    if isinstance(value, bytes | bytearray):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    if len(text) > _MAX_ERROR_INPUT_CHARS:
        return text[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"
    return text


@dataclass(frozen=True, slots=True)
class FieldError:
    """One pydantic-style error: `loc` as a tuple, plus the parameter vLLM reports, if any."""

    type: str
    loc: tuple[str | int, ...]
    msg: str
    input: object
    ctx: dict[str, object] | None = None
    param: str | None = None

    def render(self) -> str:
        err: dict[str, object] = {
            "type": self.type,
            "loc": ".".join(str(part) for part in self.loc),
            "msg": self.msg,
            "input": summarize_input(self.input),
        }
        if self.ctx is not None:
            err["ctx"] = self.ctx
        text = str(err)
        if len(text) > _MAX_ERROR_CHARS:
            text = text[:_MAX_ERROR_CHARS] + "...[truncated]"
        return text

    @property
    def loc_param(self) -> str:
        return ".".join(str(part) for part in self.loc)


def validation_error(errors: Sequence[FieldError | str]) -> ApiError:
    """vLLM's `validation_exception_handler` response for these errors (status 400)."""
    param: str | None = None
    for err in errors:
        if isinstance(err, FieldError) and err.param is not None:
            param = err.param
            break
    if param is None and errors and isinstance(errors[0], FieldError):
        param = errors[0].loc_param
    if errors:
        count = len(errors)
        label = "error" if count == 1 else "errors"
        reported = errors[:_MAX_REPORTED_ERRORS]
        message = f"{count} validation {label}:\n"
        message += "".join(
            f"  {err.render() if isinstance(err, FieldError) else err}\n" for err in reported
        )
        if count > len(reported):
            message += f"  ...and {count - len(reported)} more {label}\n"
        message = message.rstrip()
    else:
        message = "Validation error"
    return api_error(message, HTTPStatus.BAD_REQUEST.phrase, HTTPStatus.BAD_REQUEST, param)


UNSUPPORTED_MEDIA_TYPE = "Unsupported Media Type: Only 'application/json' is allowed"
