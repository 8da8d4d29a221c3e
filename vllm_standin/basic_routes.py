"""vLLM's non-generation routes: health, version, models, tokenizer, embeddings, metrics,
SageMaker ping/invocations, and the operator/dev routes (present so tests can prove a
proxy never forwards them; they answer like vLLM but change nothing).

Invariants: `/tokenize` counts tokens exactly as the generation endpoints count prompt
tokens; every JSON route checks the body like vLLM (`validate_json_request`, then the
request model's validation, then the model name).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from vllm_standin.bodies import chat_prompt, decode_json, require_object
from vllm_standin.chat import chat_completions
from vllm_standin.completions import completions
from vllm_standin.errors import (
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    FieldError,
    api_error,
    bad_request,
    model_not_found,
    validation_error,
)
from vllm_standin.messages import messages
from vllm_standin.metrics import scrape
from vllm_standin.respond import send_bytes, send_error
from vllm_standin.responses import responses
from vllm_standin.runtime import RUNTIME
from vllm_standin.vocab import WORDS, detokenize, prompt_token_count, token_ids

EMBEDDING_DIM = 8


async def health(request: web.Request) -> web.StreamResponse:
    return await send_bytes(request, 200, b"", None)


async def version(request: web.Request) -> web.StreamResponse:
    return await send_bytes(
        request, 200, orjson.dumps({"version": request.app[RUNTIME].options.vllm_version})
    )


async def load(request: web.Request) -> web.StreamResponse:
    in_flight = request.app[RUNTIME].journal.stats.in_flight
    return await send_bytes(request, 200, orjson.dumps({"server_load": max(in_flight - 1, 0)}))


async def models(request: web.Request) -> web.StreamResponse:
    options = request.app[RUNTIME].options
    now = int(time.time())
    card = {
        "id": options.model,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": options.model,
        "parent": None,
        "max_model_len": options.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{secrets.token_hex(8)}",
                "object": "model_permission",
                "created": now,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    return await send_bytes(request, 200, orjson.dumps({"object": "list", "data": [card]}))


async def _json_object(request: web.Request) -> dict[str, object] | ApiError:
    document = decode_json(await request.read(), request.headers.get("Content-Type"))
    if isinstance(document, ApiError):
        return document
    return require_object(document)


def _unknown_model(request: web.Request, body: dict[str, object]) -> ApiError | None:
    """`_check_model`: a named model other than the served one is a 404."""
    model = body.get("model")
    served = request.app[RUNTIME].options.model
    if isinstance(model, str) and model and model != served:
        return model_not_found(model, served)
    return None


def _tokenize_union_errors(body: dict[str, object]) -> ApiError:
    """Neither member of `TokenizeCompletionRequest | TokenizeChatRequest` validated.

    pydantic reports one error per member; the members' `function-wrap` location
    markers are dropped from `loc` by vLLM's handler.
    """
    errors: list[FieldError | str] = []
    for name, kind, msg, wanted in (
        ("prompt", "string_type", "Input should be a valid string", str),
        ("messages", "list_type", "Input should be a valid list", list),
    ):
        if name not in body:
            errors.append(FieldError("missing", ("body", name), "Field required", body))
        elif not isinstance(body[name], wanted):
            errors.append(FieldError(kind, ("body", name), msg, body[name]))
    return validation_error(errors)


async def tokenize(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    if isinstance(body, ApiError):
        return await send_error(request, body)
    if isinstance(body.get("prompt"), str):
        text = str(body["prompt"])
    elif isinstance(body.get("messages"), list):
        text = chat_prompt(body)
    else:
        return await send_error(request, _tokenize_union_errors(body))
    unknown = _unknown_model(request, body)
    if unknown is not None:
        return await send_error(request, unknown)
    ids = token_ids(text)
    strs = [WORDS[i % len(WORDS)] for i in ids] if body.get("return_token_strs") else None
    payload = {
        "count": len(ids),
        "max_model_len": request.app[RUNTIME].options.max_model_len,
        "tokens": ids,
        "token_strs": strs,
    }
    return await send_bytes(request, 200, orjson.dumps(payload))


async def detokenize_route(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    if isinstance(body, ApiError):
        return await send_error(request, body)
    errors = _token_list_errors(body)
    if errors:
        return await send_error(request, validation_error(errors))
    unknown = _unknown_model(request, body)
    if unknown is not None:
        return await send_error(request, unknown)
    tokens = cast(list[int], body["tokens"])  # validated by _token_list_errors
    return await send_bytes(request, 200, orjson.dumps({"prompt": detokenize(tokens)}))


def _token_list_errors(body: dict[str, object]) -> list[FieldError | str]:
    """`DetokenizeRequest.tokens: list[Annotated[int, Field(ge=0)]]` validated."""
    if "tokens" not in body:
        return [FieldError("missing", ("body", "tokens"), "Field required", body)]
    tokens = body["tokens"]
    if not isinstance(tokens, list):
        return [FieldError("list_type", ("body", "tokens"), "Input should be a valid list", tokens)]
    errors: list[FieldError | str] = []
    for i, token in enumerate(tokens):
        loc = ("body", "tokens", i)
        if isinstance(token, bool) or not isinstance(token, int):
            errors.append(FieldError("int_type", loc, "Input should be a valid integer", token))
        elif token < 0:
            msg = "Input should be greater than or equal to 0"
            errors.append(FieldError("greater_than_equal", loc, msg, token, {"ge": 0}))
    return errors


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((byte - 127.5) / 127.5, 6) for byte in digest[:EMBEDDING_DIM]]


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    if isinstance(body, ApiError):
        return await send_error(request, body)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        return await send_error(
            request, bad_request("input must be a string or a list of strings.", "input")
        )
    runtime = request.app[RUNTIME]
    prompt = sum(prompt_token_count(text) for text in inputs)
    payload = {
        "id": f"embd-{secrets.token_hex(8)}",
        "object": "list",
        "created": int(time.time()),
        "model": runtime.options.model,
        "data": [
            {"index": i, "object": "embedding", "embedding": _embedding(text)}
            for i, text in enumerate(inputs)
        ],
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": prompt,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    return await send_bytes(request, 200, orjson.dumps(payload))


async def invocations(request: web.Request) -> web.StreamResponse:
    """SageMaker's entry point: dispatch on the body's shape, chat first (as vLLM does)."""
    media_type = request.headers.get("Content-Type", "").lower().split(";", maxsplit=1)[0]
    if media_type != "application/json":
        return await send_error(request, validation_error([UNSUPPORTED_MEDIA_TYPE]))
    try:
        document = json.loads(await request.read())
    except ValueError as exc:
        return await send_error(request, api_error(f"JSON decode error: {exc}", "Bad Request", 400))
    if isinstance(document, dict) and isinstance(document.get("messages"), list):
        return await chat_completions(request)
    if isinstance(document, dict) and document.get("prompt"):
        return await completions(request)
    message = (
        "Cannot find suitable handler for request. "
        "Expected one of: ['ChatCompletionRequest', 'CompletionRequest']"
    )
    return await send_error(request, bad_request(message))


def _count_hit(request: web.Request) -> None:
    hits = request.app[RUNTIME].journal.stats.admin_hits
    hits[request.path] = hits.get(request.path, 0) + 1


async def _ok_empty(request: web.Request) -> web.StreamResponse:
    _count_hit(request)
    return await send_bytes(request, 200, b"", None)


def _ok_json(payload: dict[str, object]) -> Handler:
    body = orjson.dumps(payload)

    async def handler(request: web.Request) -> web.StreamResponse:
        _count_hit(request)
        return await send_bytes(request, 200, body)

    return handler


def _dev_routes() -> list[web.RouteDef]:
    return [
        web.post("/reset_prefix_cache", _ok_empty),
        web.post("/reset_mm_cache", _ok_empty),
        web.post("/sleep", _ok_empty),
        web.post("/wake_up", _ok_empty),
        web.get("/is_sleeping", _ok_json({"is_sleeping": False})),
        web.post("/pause", _ok_empty),
        web.post("/resume", _ok_empty),
        web.get("/is_paused", _ok_json({"is_paused": False})),
        web.post("/collective_rpc", _ok_json({"results": []})),
        web.get("/server_info", _ok_json({"vllm_config": "stand-in"})),
        web.post("/scale_elastic_ep", _ok_json({"message": "Scaled"})),
        web.post("/v1/load_lora_adapter", _ok_empty),
        web.post("/v1/unload_lora_adapter", _ok_empty),
    ]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.get("/ping", health),
        web.post("/ping", health),
        web.get("/version", version),
        web.get("/load", load),
        web.get("/v1/models", models),
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.post("/v1/messages", messages),
        web.post("/v1/responses", responses),
        web.post("/tokenize", tokenize),
        web.post("/detokenize", detokenize_route),
        web.post("/v1/embeddings", embeddings),
        web.get("/metrics", scrape),
        web.post("/invocations", invocations),
        *_dev_routes(),
    ]
