"""Stand-in modes added for issue #11, checked on the wire: force-include-usage, the SSE
keep-alive interval, admin hit counters, per-choice lengths and the Messages / Responses
error paths (the event streams themselves are checked through the sidecar in
`tests/sidecar/test_vllm_fidelity.py`)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.sidecar.test_lax_request import CORPUS, short
from tests.standin_fixture import Standin
from vllm_standin.bodies import _int_field
from vllm_standin.errors import ApiError

pydantic = pytest.importorskip("pydantic")

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "stream": True}


def _events(chunks: list[bytes]) -> list[bytes]:
    return [c for c in chunks if c.startswith(b"data: ")]


def test_force_include_usage_puts_usage_on_every_chunk(
    start_standin: Callable[..., Standin],
) -> None:
    standin = start_standin(enable_force_include_usage=True, ttft_ms=0, itl_ms=0, tokens=3)
    reply = standin.raw("POST", "/v1/chat/completions", CHAT)
    events = _events(reply.chunks)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all("usage" in chunk for chunk in chunks)  # continuous usage, role chunk included
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert not any("system_fingerprint" in c for c in chunks[:-1])  # only on the usage chunk


def test_keep_alive_comments_fill_idle_gaps(start_standin: Callable[..., Standin]) -> None:
    standin = start_standin(sse_keep_alive_interval=0.05, ttft_ms=180, itl_ms=0, tokens=2)
    reply = standin.raw("POST", "/v1/chat/completions", CHAT)
    comments = [c for c in reply.chunks if c == b": keep-alive\n\n"]
    assert 2 <= len(comments) <= 4  # ~180 ms of silence before the first token
    assert reply.chunks.index(comments[0]) == 0
    messages = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": CHAT["messages"]}
    reply = standin.raw("POST", "/v1/messages", messages)
    assert b": keep-alive" not in reply.body  # vLLM wraps only chat and completions


def test_admin_routes_count_hits(start_standin: Callable[..., Standin]) -> None:
    standin = start_standin(ttft_ms=0, itl_ms=0)
    for _ in range(2):
        assert standin.raw("POST", "/v1/load_lora_adapter", {"lora_name": "x"}).status == 200
    assert standin.raw("POST", "/sleep").status == 200
    assert standin.stats()["admin_hits"] == {"/v1/load_lora_adapter": 2, "/sleep": 1}


def test_choice_lengths_differ_per_choice(standin: Standin) -> None:
    body = {**CHAT, "n": 3}
    reply = standin.raw("POST", "/v1/chat/completions", body, {"x-standin-choice-tokens": "1,4"})
    finished = [
        choice["index"]
        for event in _events(reply.chunks)[:-1]
        for choice in orjson.loads(event[6:])["choices"]
        if choice["finish_reason"]
    ]
    assert finished == [0, 1, 2]  # choice 0 first; 1 and 2 (the last length repeats) later


def test_messages_errors_are_anthropic_shaped_except_validation(standin: Standin) -> None:
    unknown = standin.raw(
        "POST", "/v1/messages", {"model": "nope", "max_tokens": 5, "messages": []}
    )
    assert unknown.status == 404
    assert unknown.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": f"The model `nope` does not exist. Valid aliases: {MODEL}.",
        },
    }
    missing = standin.raw("POST", "/v1/messages", {"model": MODEL, "messages": []})
    assert missing.status == 400 and missing.json()["error"]["param"] == "body.max_tokens"
    body = {"model": MODEL, "max_tokens": 5, "stream": True, "messages": CHAT["messages"]}
    failed = standin.raw("POST", "/v1/messages", body, {"x-standin-scenario": "error_midstream"})
    assert failed.body.endswith(
        b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
        b'"message":"Internal server error"}}\n\n'
    )
    assert b"message_stop" not in failed.body and b"[DONE]" not in failed.body


@pytest.mark.parametrize("value", CORPUS, ids=short)
def test_integer_fields_are_read_as_pydantic_reads_them(value: object) -> None:
    got = _int_field({"n": value}, "n")
    try:
        expected = pydantic.TypeAdapter(int | None).validate_python(value)
    except pydantic.ValidationError as error:
        assert isinstance(got, ApiError) and got.status == 400, got
        assert f"'type': '{error.errors()[0]['type']}'" in got.body.decode()  # vLLM's rendering
    else:
        assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("n", "choices"), [(True, 1), ("3.0", 3), (" 2 ", 2), ("1_0", 10)])
def test_n_in_every_spelling_vllm_accepts(standin: Standin, n: object, choices: int) -> None:
    reply = standin.raw("POST", "/v1/chat/completions", {**CHAT, "stream": False, "n": n})
    assert reply.status == 200
    assert len(orjson.loads(reply.body)["choices"]) == choices
