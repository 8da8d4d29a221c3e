"""The vLLM stand-in against the official `openai` SDK and raw sockets, over loopback.

What must hold for the stand-in to be a faithful upstream: the SDK parses every shape
(chat, completions, streams, tool calls, reasoning, errors); idle keep-alive
connections are closed by the server; and the journal proves what the upstream saw
(headers, body, client aborts). The exact bytes against vLLM 0.33.0 are pinned in
`test_standin_wire.py`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)

from tests.standin_fixture import Standin, header
from vllm_standin import StandinOptions, running_standin
from vllm_standin.options import parse_options
from vllm_standin.plan import Kind, Shape, plan_choice
from vllm_standin.vocab import pick_words, prompt_token_count

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
FINGERPRINT = "vllm-0.33.0-5f423965"  # sha256(model + NUL + max_model_len)[:8]
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
]


def sdk(standin: Standin, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{standin.url}/v1", api_key="test-key", max_retries=0, timeout=timeout
    )


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def usage_of(reply: Any) -> CompletionUsage:
    usage = reply.usage
    assert isinstance(usage, CompletionUsage)
    return usage


def function_calls(reply: ChatCompletion) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of every function tool call of the first choice."""
    calls = reply.choices[0].message.tool_calls or []
    return [(c.id, c.function.name, c.function.arguments) for c in calls if c.type == "function"]


# --- raw HTTP over a socket: the bytes as they are on the wire ---------------------------


@contextmanager
def connect(standin: Standin, timeout: float = 10.0) -> Iterator[socket.socket]:
    parts = urlsplit(standin.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


# --- the openai SDK -----------------------------------------------------------------------


def test_sdk_chat_non_stream_has_vllm_fields_and_consistent_usage(standin: Standin) -> None:
    reply = sdk(standin).chat.completions.create(model=MODEL, messages=user("three word prompt"))

    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == MODEL and reply.system_fingerprint == FINGERPRINT
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert len((choice.message.content or "").split(" ")) == 16  # the session stand-in's length
    usage = usage_of(reply)
    assert usage.prompt_tokens == 3
    assert usage.completion_tokens == 17  # 16 words + the EOS token, as vLLM counts
    assert usage.total_tokens == 20


def test_sdk_stream_reassembles_to_the_non_streamed_answer(standin: Standin) -> None:
    client = sdk(standin)
    full = client.chat.completions.create(model=MODEL, messages=user("same prompt twice"))
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("same prompt twice"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_of(usage_chunk).model_dump(exclude_none=True) == usage_of(full).model_dump(
        exclude_none=True
    )


def test_x_request_id_becomes_the_completion_id(standin: Standin) -> None:
    raw = sdk(standin).chat.completions.with_raw_response.create(
        model=MODEL, messages=user("hi"), extra_headers={"X-Request-Id": "req-42"}
    )
    assert raw.parse().id == "chatcmpl-req-42"
    assert "x-request-id" not in raw.headers  # vLLM echoes only with --enable-request-id-headers
    assert raw.headers["server"] == "uvicorn"


def test_request_id_header_is_echoed_when_enabled(start_standin: Callable[..., Standin]) -> None:
    standin = start_standin(enable_request_id_headers=True, ttft_ms=0, itl_ms=0)
    raw = sdk(standin).completions.with_raw_response.create(
        model=MODEL, prompt="hello", extra_headers={"X-Request-Id": "req-7"}
    )
    assert raw.parse().id == "cmpl-req-7"
    assert raw.headers["x-request-id"] == "req-7"


def test_sdk_completions_stream_interleaves_choices_and_caps_at_max_tokens(
    standin: Standin,
) -> None:
    chunks = list(
        sdk(standin).completions.create(
            model=MODEL, prompt="once upon a time", n=2, max_tokens=3, stream=True
        )
    )

    assert [c.choices[0].index for c in chunks] == [0, 1, 0, 1, 0, 1]
    assert all(c.object == "text_completion" for c in chunks)
    texts = ["".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in (0, 1)]
    assert all(len(text.split(" ")) == 3 for text in texts)
    assert texts[0] != texts[1]
    assert [c.choices[0].finish_reason for c in chunks[-2:]] == ["length", "length"]


def test_sdk_completions_non_stream_is_capped_by_vllms_default_max_tokens(
    standin: Standin,
) -> None:
    capped = sdk(standin).completions.create(model=MODEL, prompt="a b")
    assert capped.choices[0].finish_reason == "length"  # vLLM's default max_tokens is 16
    assert len(capped.choices[0].text.split(" ")) == 16
    assert (usage_of(capped).prompt_tokens, usage_of(capped).completion_tokens) == (2, 16)
    free = sdk(standin).completions.create(model=MODEL, prompt="a b", max_tokens=100)
    assert free.choices[0].finish_reason == "stop"
    assert free.choices[0].text == capped.choices[0].text
    assert usage_of(free).completion_tokens == 17


def test_sdk_stream_helper_reassembles_tool_calls(standin: Standin) -> None:
    client = sdk(standin)
    scenario = {"x-standin-scenario": "tool_calls"}
    with client.chat.completions.stream(
        model=MODEL, messages=user("weather and time?"), tools=TOOLS, extra_headers=scenario
    ) as stream:
        streamed = stream.get_final_completion()
    direct = client.chat.completions.create(
        model=MODEL, messages=user("weather and time?"), tools=TOOLS, extra_headers=scenario
    )

    for reply in (streamed, direct):
        assert reply.choices[0].finish_reason == "tool_calls"
        calls = function_calls(reply)
        assert [name for _, name, _ in calls] == ["get_weather", "get_time"]
        assert [list(json.loads(args)) for _, _, args in calls] == [["city"], ["timezone"]]
        assert all(call_id.startswith("chatcmpl-tool-") for call_id, _, _ in calls)
    assert function_calls(streamed) == function_calls(direct)


def test_tool_call_deltas_carry_the_name_first_then_argument_fragments(standin: Standin) -> None:
    chunks = list(
        sdk(standin).chat.completions.create(
            model=MODEL,
            messages=user("weather?"),
            tools=TOOLS[:1],
            stream=True,
            extra_headers={"x-standin-scenario": "tool_calls"},
        )
    )
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    first = deltas[0]
    assert first.function is not None
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "get_weather",
        None,
    )
    fragments = [d.function.arguments or "" for d in deltas if d.index == 0 and d.function][1:]
    assert len(fragments) == 3 and all(d.id is None for d in deltas[1:4])
    assert json.loads("".join(fragments))["city"]
    assert chunks[-1].choices[0].delta.model_dump(exclude_none=True) == {}


def test_reasoning_deltas_come_before_content_under_vllms_field_name(standin: Standin) -> None:
    client = sdk(standin)
    scenario = {"x-standin-scenario": "reasoning"}
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("think"), stream=True, extra_headers=scenario
        )
    )
    kinds = []
    for chunk in chunks[1:]:
        delta = chunk.choices[0].delta.model_dump(exclude_none=True)
        assert "reasoning_content" not in delta
        kinds += [k for k in ("reasoning", "content") if delta.get(k)]
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=lambda k: k == "content")

    reply = client.chat.completions.create(
        model=MODEL, messages=user("think"), extra_headers=scenario
    )
    streamed = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks)
    assert getattr(reply.choices[0].message, "reasoning", None) == streamed
    details = usage_of(reply).completion_tokens_details
    assert details is not None and details.reasoning_tokens == len(streamed.split(" "))


def test_http_error_scenario_raises_bad_request_with_vllm_error_object(standin: Standin) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(standin).chat.completions.create(
            model=MODEL, messages=user("x"), extra_headers={"x-standin-scenario": "http_error"}
        )
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert list(caught.value.body) == ["message", "type", "param", "code"]
    assert (caught.value.type, caught.value.param, caught.value.code) == (
        "BadRequestError",
        "max_tokens",
        "400",
    )


def test_unknown_model_raises_not_found(standin: Standin) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(standin).chat.completions.create(model="no-such-model", messages=user("x"))
    assert caught.value.body == {
        "message": f"The model `no-such-model` does not exist. Valid aliases: {MODEL}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_midstream_error_event_raises_api_error_in_the_sdk(standin: Standin) -> None:
    stream = sdk(standin).chat.completions.create(
        model=MODEL,
        messages=user("x"),
        stream=True,
        extra_headers={"x-standin-scenario": "error_midstream"},
    )
    received = []
    with pytest.raises(openai.APIError, match="Internal server error"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 4  # role chunk + 3 tokens, then the error event


# --- SSE comments and compression ------------------------------------------------------


def test_keepalive_comments_are_sse_comments_the_sdk_ignores(standin: Standin) -> None:
    headers = {"x-standin-scenario": "keepalive_comments"}
    body = {"messages": user("hi"), "stream": True}
    reply = standin.raw("POST", "/v1/chat/completions", body, headers)
    assert reply.chunks.count(b": keep-alive\n\n") == 16  # before each token event after the first

    chunks = list(
        sdk(standin).chat.completions.create(
            model=MODEL, messages=user("hi"), stream=True, extra_headers=headers
        )
    )
    assert len(chunks) == 1 + 17  # role + 16 words + EOS: no comment surfaced as a chunk


def test_gzip_scenario_compresses_the_non_streamed_body(standin: Standin) -> None:
    headers = {"x-standin-scenario": "gzip"}
    reply = standin.raw("POST", "/v1/chat/completions", {"messages": user("zip")}, headers)
    assert reply.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(reply.body))["object"] == "chat.completion"


# --- HTTP behaviour ---------------------------------------------------------------------


def _read_head(sock: socket.socket) -> bytes:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        assert data, "server closed before answering"
        buffer += data
    return buffer


def test_idle_keepalive_connection_is_closed_by_the_server(
    start_standin: Callable[..., Standin],
) -> None:
    standin = start_standin(keepalive_s=0.3)
    with connect(standin, timeout=10) as sock:
        for _ in range(2):  # the connection is reused: keep-alive works
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: standin\r\n\r\n")
            assert _read_head(sock).startswith(b"HTTP/1.1 200")
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    assert closed, "the idle keep-alive connection was not closed by the server"


def test_validation_errors_use_vllms_shapes(standin: Standin) -> None:
    def post(body: bytes, content_type: str, path: str = "/v1/chat/completions") -> Any:
        reply = standin.raw("POST", path, body, {"Content-Type": content_type})
        return reply.status, reply.json()

    status, bad_json = post(b'{"messages": [', "application/json")
    assert status == 400 and bad_json["error"]["type"] == "Bad Request"
    assert (
        bad_json["error"]["param"] == "body.14" and "json_invalid" in bad_json["error"]["message"]
    )

    status, media = post(b"{}", "text/plain")
    assert (status, media["error"]["code"]) == (400, 400)
    assert "Unsupported Media Type" in media["error"]["message"]

    status, missing = post(b'{"model": "x"}', "application/json")
    assert (status, missing["error"]["param"]) == (400, "body.messages")

    status, unknown = post(b"{}", "application/json", "/v1/no-such-route")
    assert (status, unknown) == (404, {"detail": "Not Found"})


def test_client_disconnect_midstream_is_recorded_as_abort(standin: Standin) -> None:
    before = standin.stats()["streams_aborted"]
    body = json.dumps({"messages": user("long"), "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: standin\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "x-standin-tokens: 500\r\nx-standin-itl-ms: 20\r\n\r\n"
    )
    with connect(standin) as sock:
        sock.sendall(head.encode() + body)
        seen = b""
        while seen.count(b"data: ") < 3:
            seen += sock.recv(4096)

    entry = standin.wait_for(lambda e: e["outcome"] != "in_progress", "/v1/chat/completions")
    assert entry["outcome"] == "aborted"
    assert 3 <= entry["events_sent"] < 500
    assert standin.stats()["streams_aborted"] == before + 1


def test_hang_times_out_in_the_sdk_and_the_upstream_sees_the_abort(standin: Standin) -> None:
    with pytest.raises(openai.APITimeoutError):
        sdk(standin, timeout=0.3).chat.completions.create(
            model=MODEL, messages=user("x"), extra_headers={"x-standin-scenario": "hang"}
        )
    entry = standin.wait_for(lambda e: e["outcome"] != "in_progress", "/v1/chat/completions")
    assert (entry["outcome"], entry["status"], entry["scenario"]) == ("aborted", None, "hang")


def test_journal_shows_headers_and_body_as_received(standin: Standin) -> None:
    body = json.dumps({"messages": user("audit me"), "user": "u1"}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-LLM-User": "alice"}
    standin.raw("POST", "/v1/chat/completions?trace=1", body, headers)

    (entry,) = standin.requests("/v1/chat/completions")
    assert header(entry, "x-llm-user") == "alice"
    assert entry["headers"]["X-LLM-User"] == "alice"  # name case kept as sent
    assert header(entry, "authorization") is None
    assert entry["query"] == "trace=1"
    assert (entry["body_bytes"], entry["body_sha256"]) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    assert entry["body_json"] == json.loads(body)
    assert (entry["outcome"], entry["status"], entry["stream"]) == ("completed", 200, False)
    standin.reset()
    assert standin.requests() == []


def post_json(standin: Standin, path: str, payload: object) -> tuple[int, Any]:
    reply = standin.raw("POST", path, payload)
    return reply.status, reply.json() if reply.body else None


def test_side_routes_exist_and_count_like_generation(standin: Standin) -> None:
    client = sdk(standin)
    prompt = "count these four"
    reply = client.chat.completions.create(model=MODEL, messages=user(prompt))
    status, tokenized = post_json(standin, "/tokenize", {"messages": user(prompt)})
    assert status == 200 and tokenized["count"] == usage_of(reply).prompt_tokens == 3
    assert [m.id for m in client.models.list()] == [MODEL]

    status, invoked = post_json(standin, "/invocations", {"messages": user(prompt)})
    assert (status, invoked["object"]) == (200, "chat.completion")
    for path in ("/reset_prefix_cache", "/sleep", "/wake_up", "/collective_rpc"):
        assert post_json(standin, path, {})[0] == 200
    paths = {e["path"] for e in standin.requests()}
    assert {"/tokenize", "/invocations", "/reset_prefix_cache", "/v1/models"} <= paths


def test_continuous_usage_stats_put_running_usage_on_every_chunk(standin: Standin) -> None:
    chunks = list(
        sdk(standin).chat.completions.create(
            model=MODEL,
            messages=user("a b c"),
            stream=True,
            extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        )
    )
    counts = [usage_of(c).completion_tokens for c in chunks]
    assert counts == [*range(0, 18), 17]  # role chunk, 16 words, EOS, then the final usage
    assert all(usage_of(c).prompt_tokens == 3 for c in chunks)


# --- in-process runner and options --------------------------------------------------------


async def test_running_standin_serves_in_process_on_a_free_port() -> None:
    options = StandinOptions(port=0, ttft_ms=0, itl_ms=0, tokens=2)
    async with running_standin(options) as running, aiohttp.ClientSession() as session:
        assert running.port != 0
        payload = {"messages": user("x"), "stream": True}
        async with session.post(f"{running.url}/v1/chat/completions", json=payload) as resp:
            body = await resp.read()
        assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") == 5
        assert running.journal.stats.streams_completed == 1


def test_cli_flags_win_over_environment_over_defaults() -> None:
    env = {"STANDIN_TOKENS": "5", "STANDIN_ITL_MS": "7", "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "2"}
    options = parse_options(["--tokens", "9", "--enable-request-id-headers"], env)
    assert (options.tokens, options.itl_ms, options.keepalive_s) == (9, 7.0, 2.0)
    assert options.enable_request_id_headers is True
    assert parse_options([], {}).keepalive_s == 5.0  # vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE


@pytest.mark.parametrize(
    ("shape", "max_tokens", "finish", "tokens"),
    [
        (Shape(4), None, "stop", 5),  # 4 words + EOS
        (Shape(4), 5, "stop", 5),  # the cap lands exactly on EOS
        (Shape(4), 3, "length", 3),
        (Shape(4, tool_names=("f", "g")), None, "tool_calls", 9),  # 2 x (name + 3 pieces) + EOS
        (Shape(4, tool_names=("f", "g")), 2, "length", 2),
        (Shape(4, reasoning=True), None, "stop", 7),  # 2 reasoning + 4 words + EOS
    ],
)
def test_finish_reason_follows_where_max_tokens_cuts(
    shape: Shape, max_tokens: int | None, finish: str, tokens: int
) -> None:
    plan = plan_choice("some prompt", 0, shape, max_tokens)
    assert (plan.finish_reason, plan.completion_tokens) == (finish, tokens)
    assert (plan.steps[-1].kind is Kind.EOS) == (finish != "length")


def test_generation_is_deterministic_in_the_prompt() -> None:
    assert pick_words("a prompt", "content-0", 6) == pick_words("a prompt", "content-0", 6)
    assert pick_words("a prompt", "content-0", 6) != pick_words("a prompt", "content-1", 6)
    assert pick_words("ping", "content-0", 2) == ["résumé", "café"]  # pinned across versions
    assert (prompt_token_count("  two   words "), prompt_token_count("")) == (2, 1)


def test_session_standin_journal_is_reset_between_tests(standin: Standin) -> None:
    assert standin.requests() == []  # earlier tests left entries; the fixture cleared them
