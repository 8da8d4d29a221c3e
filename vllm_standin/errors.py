"""vLLM's error bodies, byte for byte: the `ErrorResponse` JSON, request-validation
messages, FastAPI's `{"detail": ...}` and the in-stream error event.

Invariants: JSON bodies are compact with UTF-8 unescaped (Starlette `JSONResponse`);
the in-stream error event is `json.dumps` with its defaults (spaces, ASCII escapes),
because that is what vLLM's `create_streaming_error_response` uses. Key order is
always message, type, param, code.
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


def model_not_found(model: str) -> ApiError:
    return api_error(
        f"The model `{model}` does not exist.", "NotFoundError", HTTPStatus.NOT_FOUND, "model"
    )


def max_tokens_too_large(max_tokens: int, max_model_len: int, prompt_tokens: int) -> ApiError:
    return bad_request(
        "'max_tokens' or 'max_completion_tokens' is too large: "
        f"{max_tokens}. This model's maximum context length is {max_model_len} tokens "
        f"and your request has {prompt_tokens} input tokens ({max_tokens} > "
        f"{max_model_len} - {prompt_tokens}).",
        "max_tokens",
    )


_SCENARIO_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequestError", ""),
    404: ("NotFoundError", ""),
    500: ("InternalServerError", "Internal server error"),
    501: ("NotImplementedError", "Not implemented"),
    503: ("Service Unavailable", "The server is not ready"),
}


def scenario_error(status: int, model: str, prompt_tokens: int, max_model_len: int) -> ApiError:
    """The error the `http_error` scenario sends: a realistic vLLM error for `status`."""
    if status == HTTPStatus.BAD_REQUEST:
        return max_tokens_too_large(max_model_len + 1, max_model_len, prompt_tokens)
    if status == HTTPStatus.NOT_FOUND:
        return model_not_found(model)
    err_type, message = _SCENARIO_ERRORS[status]
    return api_error(message, err_type, status)


def streaming_error_event(message: str, err_type: str, code: int) -> bytes:
    """The `data:` event vLLM sends when a stream fails after its 200 went out."""
    payload = json.dumps({"error": error_info(message, err_type, code)})
    return f"data: {payload}\n\n".encode()


def generation_error_event() -> bytes:
    """`GenerationError` (engine `finish_reason == "error"`) as a stream event."""
    return streaming_error_event("Internal server error", "InternalServerError", 500)


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
