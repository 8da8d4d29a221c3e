"""The stand-in's bytes against vLLM 0.33.0's, as read from the released wheel.

Each expected value below is what the 0.33.0 source produces for the same request
(file and line references in `vllm_standin/WIRE_FORMAT.md`): pydantic's
`exclude_unset` dumps with their explicit nulls, the terminal-chunk fingerprint, the
per-endpoint in-stream error encodings, and the error messages of the request
checks. A drift in any of them breaks the byte comparisons the sidecar tests rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.standin_fixture import Standin, launch_standin

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
FINGERPRINT = "vllm-0.33.0-5f423965"  # sha256(model + NUL + max_model_len)[:8]
PINNED = {"x-standin-created": "1700000000"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_prefix(request_id: str) -> str:
    return (
        f'data: {{"id":"chatcmpl-{request_id}","object":"chat.completion.chunk",'
        f'"created":1700000000,"model":"{MODEL}","choices":[{{"index":0,"delta":'
    )


def events(*lines: str) -> list[bytes]:
    return [f"{line}\n\n".encode() for line in lines]


# --- streams ------------------------------------------------------------------------------


def test_chat_stream_bytes(standin: Standin) -> None:
    headers = {**PINNED, "x-standin-tokens": "2", "X-Request-Id": "exact-1"}
    body = {"model": MODEL, "messages": user("ping"), "stream": True}
    reply = standin.raw("POST", CHAT, body, headers)

    pre = chat_prefix("exact-1")
    assert reply.chunks == events(  # one HTTP chunk per event
        f'{pre}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],'
        '"prompt_token_ids":null,"prompt_text":null}',
        f'{pre}{{"content":"résumé"}},"logprobs":null,"finish_reason":null,"token_ids":null}}],'
        '"kv_transfer_params":null}',
        f'{pre}{{"content":" café"}},"logprobs":null,"finish_reason":null,"token_ids":null}}],'
        '"kv_transfer_params":null}',
        f'{pre}{{"content":""}},"logprobs":null,"finish_reason":"stop","stop_reason":null,'
        f'"token_ids":null,"weight_versions":null}}],"system_fingerprint":"{FINGERPRINT}",'
        '"kv_transfer_params":null}',
        "data: [DONE]",
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.headers["server"] == "uvicorn"


def test_chat_stream_with_continuous_usage_bytes(standin: Standin) -> None:
    headers = {**PINNED, "x-standin-tokens": "1", "X-Request-Id": "exact-2"}
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {"messages": user("ping"), "stream": True, "stream_options": options}
    reply = standin.raw("POST", CHAT, body, headers)

    def usage(completion: int) -> str:
        return (
            f'"usage":{{"prompt_tokens":1,"total_tokens":{1 + completion},'
            f'"completion_tokens":{completion},"completion_tokens_details":null}}'
        )

    pre = chat_prefix("exact-2")
    assert reply.chunks == events(
        f'{pre}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],'
        f'{usage(0)},"prompt_token_ids":null,"prompt_text":null}}',
        f'{pre}{{"content":"résumé"}},"logprobs":null,"finish_reason":null,"token_ids":null}}],'
        f'{usage(1)},"kv_transfer_params":null}}',
        # include_usage on: no fingerprint here, it rides on the usage chunk.
        f'{pre}{{"content":""}},"logprobs":null,"finish_reason":"stop","stop_reason":null,'
        f'"token_ids":null,"weight_versions":null}}],{usage(2)},"kv_transfer_params":null}}',
        f'data: {{"id":"chatcmpl-exact-2","object":"chat.completion.chunk",'
        f'"created":1700000000,"model":"{MODEL}","choices":[],"usage":{{"prompt_tokens":1,'
        f'"total_tokens":3,"completion_tokens":2}},"system_fingerprint":"{FINGERPRINT}"}}',
        "data: [DONE]",
    )


def test_completion_stream_bytes(standin: Standin) -> None:
    headers = {**PINNED, "x-standin-tokens": "1", "X-Request-Id": "exact-3"}
    body = {"model": MODEL, "prompt": "ping", "stream": True}
    reply = standin.raw("POST", COMPLETIONS, body, headers)

    pre = (
        f'data: {{"id":"cmpl-exact-3","object":"text_completion","created":1700000000,'
        f'"model":"{MODEL}","choices":[{{"index":0,"text":'
    )
    assert reply.chunks == events(
        f'{pre}"résumé","logprobs":null,"finish_reason":null,"stop_reason":null,'
        '"prompt_token_ids":null,"token_ids":null,"weight_versions":null}],'
        '"kv_transfer_params":null}',
        f'{pre}"","logprobs":null,"finish_reason":"stop","stop_reason":null,'
        '"prompt_token_ids":null,"token_ids":null,"weight_versions":null}],'
        f'"system_fingerprint":"{FINGERPRINT}","kv_transfer_params":null}}',
        "data: [DONE]",
    )


def test_completion_usage_chunk_keeps_defaults_and_drops_nulls(standin: Standin) -> None:
    headers = {**PINNED, "x-standin-tokens": "1", "X-Request-Id": "exact-4"}
    body = {"prompt": "ping", "stream": True, "stream_options": {"include_usage": True}}
    reply = standin.raw("POST", COMPLETIONS, body, headers)

    assert reply.chunks[-2:] == events(
        f'data: {{"id":"cmpl-exact-4","object":"text_completion","created":1700000000,'
        f'"model":"{MODEL}","choices":[],"usage":{{"prompt_tokens":1,"total_tokens":3,'
        f'"completion_tokens":2}},"system_fingerprint":"{FINGERPRINT}"}}',
        "data: [DONE]",
    )
    assert b'"system_fingerprint"' not in reply.chunks[-3]  # the terminal choice chunk


def test_tool_call_deltas_carry_an_explicit_null_content(standin: Standin) -> None:
    headers = {**PINNED, "x-standin-scenario": "tool_calls", "X-Request-Id": "exact-5"}
    body = {"messages": user("weather?"), "stream": True}
    reply = standin.raw("POST", CHAT, body, headers)

    start, first_args = reply.chunks[1], reply.chunks[2]
    assert start.startswith(
        f'{chat_prefix("exact-5")}{{"content":null,"tool_calls":[{{"id":"chatcmpl-tool-'.encode()
    )
    assert b'"type":"function","index":0,"function":{"name":"get_weather"}}]}' in start
    assert first_args.startswith(
        f'{chat_prefix("exact-5")}{{"content":null,"tool_calls":[{{"index":0,'
        '"function":{"arguments":"{\\"city\\": "}}]},"logprobs":null'.encode()
    )
    final = reply.chunks[-2]
    assert b'"delta":{},"logprobs":null,"finish_reason":"tool_calls"' in final


@pytest.mark.parametrize(
    ("path", "body", "error_event"),
    [
        (  # chat: the yielded ErrorResponse, model_dump_json() — compact
            CHAT,
            {"messages": user("x"), "stream": True},
            b'data: {"error":{"message":"Internal server error","type":"InternalServerError",'
            b'"param":null,"code":500}}\n\n',
        ),
        (  # completions: create_streaming_error_response — json.dumps defaults
            COMPLETIONS,
            {"prompt": "x", "stream": True},
            b'data: {"error": {"message": "Internal server error", "type": '
            b'"InternalServerError", "param": null, "code": 500}}\n\n',
        ),
    ],
    ids=["chat", "completions"],
)
def test_midstream_error_event_encoding_follows_the_endpoint(
    standin: Standin, path: str, body: dict[str, Any], error_event: bytes
) -> None:
    headers = {"x-standin-scenario": "error_midstream", "x-standin-error-after": "1"}
    reply = standin.raw("POST", path, body, headers)
    assert reply.status == 200
    assert reply.chunks[-2:] == [error_event, b"data: [DONE]\n\n"]


# --- whole bodies -------------------------------------------------------------------------


def test_non_streamed_bodies_have_every_field_in_model_order(standin: Standin) -> None:
    chat = standin.raw("POST", CHAT, {"messages": user("ping")}, PINNED).json()
    assert list(chat) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
        "usage", "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
        "ec_transfer_params", "metrics",
    ]  # fmt: skip
    assert list(chat["choices"][0]) == [
        "index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids",
        "routed_experts", "weight_versions",
    ]  # fmt: skip
    assert list(chat["choices"][0]["message"]) == [
        "role", "content", "refusal", "annotations", "audio", "function_call", "reasoning",
    ]  # fmt: skip

    text = standin.raw("POST", COMPLETIONS, {"prompt": "ping"}, PINNED).json()
    assert list(text) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
        "usage", "kv_transfer_params", "ec_transfer_params", "metrics",
    ]  # fmt: skip
    assert list(text["choices"][0]) == [
        "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
        "prompt_logprobs", "prompt_token_ids", "routed_experts", "weight_versions",
    ]  # fmt: skip
    assert list(text["usage"]) == [
        "prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
        "completion_tokens_details",
    ]  # fmt: skip


def test_body_request_id_names_the_completion_unless_the_header_does(standin: Standin) -> None:
    body = {"messages": user("x"), "request_id": "from-body"}
    assert standin.raw("POST", CHAT, body).json()["id"] == "chatcmpl-from-body"
    by_header = standin.raw("POST", CHAT, body, {"X-Request-Id": "from-header"})
    assert by_header.json()["id"] == "chatcmpl-from-header"
    plain = standin.raw("POST", COMPLETIONS, {"prompt": "x"}).json()["id"]
    assert plain.startswith("cmpl-") and len(plain) == len("cmpl-") + 16  # random_uuid()


# --- request checks -----------------------------------------------------------------------


def words(count: int) -> str:
    return " ".join(["w"] * count)


def bad_request(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}


@pytest.fixture(scope="module")
def small_context(proc_log_dir: Path) -> Iterator[Standin]:
    """A stand-in with a 10-token context, so the length checks are cheap to reach."""
    standin = launch_standin(proc_log_dir, "standin-small", max_model_len=10, tokens=16)
    try:
        yield standin
    finally:
        standin.proc.stop()


LENGTH_CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "max_tokens above the context",
        CHAT,
        {"messages": user("a b"), "max_tokens": 11},
        bad_request(
            "max_tokens=11 cannot be greater than max_model_len=10. Please request fewer "
            "output tokens. (parameter=max_tokens, value=11)",
            "max_tokens",
        ),
    ),
    (
        "max_completion_tokens is named as such",
        CHAT,
        {"messages": user("a b"), "max_completion_tokens": 12, "max_tokens": 1},
        bad_request(
            "max_completion_tokens=12 cannot be greater than max_model_len=10. Please "
            "request fewer output tokens. (parameter=max_completion_tokens, value=12)",
            "max_completion_tokens",
        ),
    ),
    (
        "text prompt longer than the context: tokenized up to the context + 1",
        CHAT,
        {"messages": user(words(25))},
        bad_request(
            "This model's maximum context length is 10 tokens. However, your prompt contains "
            "at least 11 input tokens, which exceeds this limit even without any output "
            "tokens. Please reduce the length of the input prompt. "
            "(parameter=input_tokens, value=11)",
            "input_tokens",
        ),
    ),
    (
        "token-id prompt longer than the context: exact length",
        COMPLETIONS,
        {"prompt": list(range(12)), "max_tokens": 2},  # the default 16 exceeds the context
        bad_request(
            "This model's maximum context length is 10 tokens. However, your prompt contains "
            "12 input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt. (parameter=input_tokens, value=12)",
            "input_tokens",
        ),
    ),
    (
        "a prompt that fills the context leaves max_tokens 0",
        CHAT,
        {"messages": user(words(10))},
        bad_request(
            "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", "max_tokens"
        ),
    ),
    (
        "n below 1: SamplingParams names no parameter",
        CHAT,
        {"messages": user("a"), "n": 0},
        bad_request("n must be at least 1, got 0.", None),
    ),
    (
        "unknown model: 404 listing the served name",
        COMPLETIONS,
        {"model": "gpt-4", "prompt": "a", "max_tokens": 50},
        {
            "error": {
                "message": f"The model `gpt-4` does not exist. Valid aliases: {MODEL}.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [case[1:] for case in LENGTH_CASES],
    ids=[case[0] for case in LENGTH_CASES],
)
def test_length_and_sampling_checks_answer_like_vllm(
    small_context: Standin, path: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    reply = small_context.raw("POST", path, body)
    assert (reply.status, reply.json()) == (expected["error"]["code"], expected)


def test_max_tokens_beyond_the_remaining_context_is_clamped_not_refused(
    small_context: Standin,
) -> None:
    reply = small_context.raw("POST", CHAT, {"messages": user(words(8)), "max_tokens": 5})
    answer = reply.json()
    assert reply.status == 200
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2  # 10 - 8 left in the context


def test_stream_options_without_stream_is_a_validation_error(standin: Standin) -> None:
    body = {"messages": user("a"), "stream_options": {"include_usage": True}}
    reply = standin.raw("POST", CHAT, body)
    assert reply.status == 400
    assert reply.json() == {
        "error": {
            "message": "1 validation error:\n  {'type': 'value_error', 'loc': 'body', 'msg': "
            "'Value error, Stream options can only be defined when `stream=True`. "
            "(parameter=stream_options)', 'input': '<dict of 2 items>', 'ctx': {'error': "
            "VLLMValidationError('Stream options can only be defined when `stream=True`.')}}",
            "type": "Bad Request",
            "param": "stream_options",
            "code": 400,
        }
    }


def test_tokenizer_routes_validate_like_their_request_models(standin: Standin) -> None:
    neither = standin.raw("POST", "/tokenize", {"model": MODEL}).json()["error"]
    assert (neither["param"], neither["type"]) == ("body.prompt", "Bad Request")
    assert neither["message"].startswith("2 validation errors:\n  {'type': 'missing', 'loc': ")
    assert "'loc': 'body.messages'" in neither["message"]

    negative = standin.raw("POST", "/detokenize", {"tokens": [1, -2]}).json()["error"]
    assert negative["param"] == "body.tokens.1"
    assert "greater_than_equal" in negative["message"]

    unknown = standin.raw("POST", "/tokenize", {"model": "other", "prompt": "a"})
    assert (unknown.status, unknown.json()["error"]["type"]) == (404, "NotFoundError")
    assert standin.raw("POST", "/detokenize", {"tokens": [1, 2]}).json() == {
        "prompt": "audit record"
    }


@pytest.mark.parametrize(
    ("status", "path", "err_type", "message"),
    [
        (
            503,
            CHAT,
            "Service Unavailable",
            "The engine is currently busy and cannot accept new requests. "
            "Please try again later or on a different instance.",
        ),
        (501, COMPLETIONS, "NotImplementedError", "The model does not support Completions API"),
        (500, CHAT, "InternalServerError", "Internal server error"),
    ],
)
def test_http_error_scenarios_use_vllms_messages(
    standin: Standin, status: int, path: str, err_type: str, message: str
) -> None:
    headers = {"x-standin-scenario": "http_error", "x-standin-error-status": str(status)}
    body = {"messages": user("x")} if path == CHAT else {"prompt": "x"}
    reply = standin.raw("POST", path, body, headers)
    assert (reply.status, reply.json()) == (
        status,
        {"error": {"message": message, "type": err_type, "param": None, "code": status}},
    )


def test_health_is_an_empty_200_without_content_type(standin: Standin) -> None:
    reply = standin.raw("GET", "/health")
    assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"", "0")
    assert "content-type" not in reply.headers
