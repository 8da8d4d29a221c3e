"""The stand-in's bytes against vLLM 0.33.0's, as read from the released wheel.

Each expected value below is what the 0.33.0 source produces for the same request
(file and line references in `vllm_standin/WIRE_FORMAT.md`): pydantic's
`exclude_unset` dumps with their explicit nulls, the terminal-chunk fingerprint, the
per-endpoint in-stream error encodings, and the error messages of the request
checks. A drift in any of them breaks the byte comparisons the sidecar tests rely on.
"""

from __future__ import annotations

import re
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


# --- Anthropic Messages and Responses streams ---------------------------------------------
#
# Framing: `event: <type>\ndata: <json>\n\n`, one HTTP chunk per event, no `[DONE]`
# (`anthropic/serving.py:154-155`, `openai/responses/api_router.py:34-45`). Values vLLM
# draws at random cannot be pinned against vLLM; `unrandom` checks each one's shape and
# names it by order of appearance, so every other byte is still compared exactly and
# "the same id here as there" is still checked:
#
# - Messages: the message id is the chat id `chatcmpl-<X-Request-Id>` (pinned by the
#   header, as in vLLM); a thinking block's signature is `uuid.uuid4().hex`
#   (`anthropic/serving.py:946`); a tool_use id is the tool parser's
#   `chatcmpl-tool-<random_uuid()>` (the stand-in derives it from the prompt instead, a
#   fact this test does not rely on).
# - Responses: the response id is the body's `request_id` (pinned by the body, as in
#   vLLM; `X-Request-Id` is not used), `created_at` by `x-standin-created`; the message
#   item id is `msg_<random_uuid()>` (`streaming_events.py:839`); `sequence_number`
#   counts from 0 (`openai/responses/serving.py:1359-1369`).

MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
RANDOM = {
    "sig": rb'(?<="signature":")[0-9a-f]{32}(?=")',  # uuid.uuid4().hex
    "tool": rb"chatcmpl-tool-[0-9a-f]{16}",  # make_tool_call_id(): random_uuid()
    "msg": rb"msg_[0-9a-f]{16}",  # f"msg_{random_uuid()}"
}


def unrandom(chunks: list[bytes]) -> list[bytes]:
    """Each random value, once its shape is checked, becomes `<kind-n>` (n-th distinct)."""
    names: dict[bytes, bytes] = {}

    def name(kind: str, match: re.Match[bytes]) -> bytes:
        seen = sum(1 for n in names.values() if n.startswith(f"<{kind}-".encode()))
        return names.setdefault(match.group(), f"<{kind}-{seen}>".encode())

    out = []
    for chunk in chunks:
        for kind, pattern in RANDOM.items():
            chunk = re.sub(pattern, lambda m, kind=kind: name(kind, m), chunk)
        out.append(chunk)
    return out


def sse(*pairs: tuple[str, str]) -> list[bytes]:
    return [f"event: {kind}\ndata: {data}\n\n".encode() for kind, data in pairs]


def message_start(request_id: str, input_tokens: int) -> tuple[str, str]:
    return (
        "message_start",
        f'{{"type":"message_start","message":{{"id":"chatcmpl-{request_id}","type":"message",'
        f'"role":"assistant","content":[],"model":"{MODEL}","stop_reason":null,'
        f'"stop_sequence":null,"usage":{{"input_tokens":{input_tokens},"output_tokens":0}}}}}}',
    )


def block_start(index: int, block: str) -> tuple[str, str]:
    return (
        "content_block_start",
        f'{{"type":"content_block_start","content_block":{block},"index":{index}}}',
    )


def block_delta(index: int, delta: str) -> tuple[str, str]:
    return (
        "content_block_delta",
        f'{{"type":"content_block_delta","delta":{delta},"index":{index}}}',
    )


def block_stop(index: int) -> tuple[str, str]:
    return ("content_block_stop", f'{{"type":"content_block_stop","index":{index}}}')


def message_end(stop_reason: str, input_tokens: int, output_tokens: int) -> list[tuple[str, str]]:
    return [
        (
            "message_delta",
            f'{{"type":"message_delta","delta":{{"stop_reason":"{stop_reason}",'
            f'"stop_sequence":null}},"usage":{{"input_tokens":{input_tokens},'
            f'"output_tokens":{output_tokens}}}}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]


def test_messages_stream_bytes(standin: Standin) -> None:
    headers = {"x-standin-tokens": "2", "X-Request-Id": "exact-m1"}
    body = {"model": MODEL, "max_tokens": 64, "messages": user("ping"), "stream": True}
    reply = standin.raw("POST", MESSAGES, body, headers)

    assert reply.chunks == sse(
        message_start("exact-m1", 1),
        block_start(0, '{"type":"text","text":""}'),
        block_delta(0, '{"type":"text_delta","text":"résumé"}'),
        block_delta(0, '{"type":"text_delta","text":" café"}'),
        block_stop(0),  # the EOS token's empty text opens nothing
        *message_end("end_turn", 1, 3),
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["transfer-encoding"] == "chunked"


def test_messages_thinking_stream_bytes(standin: Standin) -> None:
    headers = {"x-standin-tokens": "2", "X-Request-Id": "exact-m2"}
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": user("ping"),
        "thinking": {"type": "adaptive"},
        "stream": True,
    }
    reply = standin.raw("POST", MESSAGES, body, headers)

    assert unrandom(reply.chunks) == sse(
        message_start("exact-m2", 1),
        block_start(0, '{"type":"thinking","thinking":""}'),
        block_delta(0, '{"type":"thinking_delta","thinking":"Zürich"}'),
        block_delta(0, '{"type":"thinking_delta","thinking":" kernel"}'),
        block_delta(0, '{"type":"signature_delta","signature":"<sig-0>"}'),
        block_stop(0),
        block_start(1, '{"type":"text","text":""}'),
        block_delta(1, '{"type":"text_delta","text":"résumé"}'),
        block_delta(1, '{"type":"text_delta","text":" café"}'),
        block_stop(1),
        *message_end("end_turn", 1, 5),
    )


def test_messages_tool_use_stream_bytes(standin: Standin) -> None:
    headers = {"x-standin-scenario": "tool_calls", "X-Request-Id": "exact-m3"}
    tools = [
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": user("ping"),
        "tools": tools,
        "stream": True,
    }
    reply = standin.raw("POST", MESSAGES, body, headers)

    def tool_use(n: int, name: str) -> str:
        return f'{{"type":"tool_use","id":"<tool-{n}>","name":"{name}","input":{{}}}}'

    def json_delta(fragment: str) -> str:  # `fragment` as JSON string text
        return f'{{"type":"input_json_delta","partial_json":"{fragment}"}}'

    assert unrandom(reply.chunks) == sse(
        message_start("exact-m3", 1),
        block_start(0, tool_use(0, "get_weather")),  # the name delta carries no arguments
        block_delta(0, json_delta('{\\"city\\": ')),
        block_delta(0, json_delta('\\"Record')),
        block_delta(0, json_delta('\\"}')),
        block_stop(0),
        block_start(1, tool_use(1, "get_time")),
        block_delta(1, json_delta('{\\"timezone\\": ')),
        block_delta(1, json_delta('\\"Umber')),
        block_delta(1, json_delta('\\"}')),
        block_stop(1),
        *message_end("tool_use", 1, 9),
    )


def response_object(status: str, max_output: int, output: str, usage: str) -> str:
    """`ResponsesResponse` dumped whole, in field order (`metrics` excluded when None)."""
    incomplete = '{"reason":"max_output_tokens"}' if status == "incomplete" else "null"
    return (
        f'{{"id":"resp-exact-r1","created_at":1700000000,"incomplete_details":{incomplete},'
        f'"instructions":null,"metadata":null,"model":"{MODEL}","object":"response",'
        f'"output":{output},"parallel_tool_calls":true,"temperature":1.0,'
        # no tools: check_tool_usage turned the default "auto" into "none"
        '"tool_choice":"none","tools":[],"top_p":1.0,"background":false,'
        f'"max_output_tokens":{max_output},"max_tool_calls":null,"previous_response_id":null,'
        '"prompt":null,"prompt_cache_options":null,"prompt_cache_key":null,'
        '"prompt_cache_retention":null,"reasoning":null,"safety_identifier":null,'
        f'"service_tier":"auto","status":"{status}","text":null,"top_logprobs":null,'
        f'"truncation":"disabled","usage":{usage},"user":null,"presence_penalty":0.0,'
        '"frequency_penalty":0.0,"kv_transfer_params":null,"ec_transfer_params":null,'
        '"input_messages":null,"output_messages":null}'
    )


@pytest.mark.parametrize(
    ("max_output_tokens", "status", "words", "output_tokens"),
    [(None, "completed", 2, 3), (2, "incomplete", 2, 2)],
    ids=["completed", "cut-by-max_output_tokens"],
)
def test_responses_stream_bytes(
    standin: Standin,
    max_output_tokens: int | None,
    status: str,
    words: int,
    output_tokens: int,
) -> None:
    headers = {**PINNED, "x-standin-tokens": str(words)}
    body: dict[str, Any] = {
        "model": MODEL,
        "input": "ping",
        "stream": True,
        "request_id": "resp-exact-r1",
    }
    if max_output_tokens is not None:
        body["max_output_tokens"] = max_output_tokens
    reply = standin.raw("POST", RESPONSES, body, headers)

    max_output = max_output_tokens or 32768 - 1  # the context left after the prompt
    initial = response_object("in_progress", max_output, "[]", "null")
    item = '"item_id":"<msg-0>","output_index":0'
    part = '{"annotations":[],"text":"résumé café","type":"output_text","logprobs":null}'
    message = (
        f'{{"id":"<msg-0>","content":[{part}],"role":"assistant","status":"{status}",'
        '"type":"message","phase":null}'
    )
    usage = (
        '{"input_tokens":1,"input_tokens_details":{"cached_tokens":0,"cache_write_tokens":0,'
        f'"input_tokens_per_turn":[],"cached_tokens_per_turn":[]}},"output_tokens":{output_tokens},'
        '"output_tokens_details":{"reasoning_tokens":0,"tool_output_tokens":0,'
        '"output_tokens_per_turn":[],"tool_output_tokens_per_turn":[]},'
        f'"total_tokens":{1 + output_tokens}}}'
    )
    final = response_object(status, max_output, f"[{message}]", usage)
    terminal = "response.incomplete" if status == "incomplete" else "response.completed"

    def delta(seq: int, text: str) -> tuple[str, str]:
        return (
            "response.output_text.delta",
            f'{{"content_index":0,"delta":"{text}","item_id":"<msg-0>","logprobs":[],'
            f'"output_index":0,"sequence_number":{seq},"type":"response.output_text.delta"}}',
        )

    assert unrandom(reply.chunks) == sse(
        (
            "response.created",
            f'{{"response":{initial},"sequence_number":0,"type":"response.created"}}',
        ),
        (
            "response.in_progress",
            f'{{"response":{initial},"sequence_number":1,"type":"response.in_progress"}}',
        ),
        (
            "response.output_item.added",
            '{"item":{"id":"<msg-0>","content":[],"role":"assistant","status":"in_progress",'
            '"type":"message","phase":null},"output_index":0,"sequence_number":2,'
            '"type":"response.output_item.added"}',
        ),
        (
            "response.content_part.added",
            f'{{"content_index":0,{item},"part":{{"annotations":[],"text":"",'
            '"type":"output_text","logprobs":[]},"sequence_number":3,'
            '"type":"response.content_part.added"}',
        ),
        delta(4, "résumé"),
        delta(5, " café"),
        (
            "response.output_text.done",
            '{"content_index":0,"item_id":"<msg-0>","logprobs":[],"output_index":0,'
            '"sequence_number":6,"text":"résumé café","type":"response.output_text.done"}',
        ),
        (
            "response.content_part.done",
            f'{{"content_index":0,{item},"part":{part},"sequence_number":7,'
            '"type":"response.content_part.done"}',
        ),
        (
            "response.output_item.done",
            f'{{"item":{message},"output_index":0,"sequence_number":8,'
            '"type":"response.output_item.done"}',
        ),
        (terminal, f'{{"response":{final},"sequence_number":9,"type":"{terminal}"}}'),
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"


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
