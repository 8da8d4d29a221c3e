"""vLLM 0.33 fidelity through the real sidecar process and the stand-in (issues #10 and #11).

Admin routes are never forwarded (the stand-in counts their hits), every spelling
of `stream` vLLM accepts gets usage recorded, usage the client asked for in any
spelling stays in its stream, and with n=3 every choice reaches the client as it
is generated.
"""

from __future__ import annotations

import asyncio
import itertools
import socketserver
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from sidecar_audit.client_stream import ClientStream
from sidecar_audit.spool.recovery import HEADER_SIZE, Frame, decode_frames
from sidecar_audit.sse import SSEDecoder
from sidecar_audit.upstream import Connection
from tests.sidecar_fixture import AUDIT_HEADERS, sidecar_app

CHAT = {
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "messages": [{"role": "user", "content": "Say hello to the auditors"}],
}
ADMIN = [
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/scale_elastic_ep",
    "/pause",
    "/reset_prefix_cache",
]


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


def rid() -> str:
    return f"t-{uuid.uuid4().hex}"


async def stream_events(url: str, body: dict, request_id: str) -> list[tuple[float, bytes]]:
    """Each SSE payload with the time it arrived."""
    decoder = SSEDecoder()
    events: list[tuple[float, bytes]] = []
    headers = {**AUDIT_HEADERS, "x-request-id": request_id, "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(body), headers=headers) as response,
    ):
        assert response.status == 200
        async for chunk in response.content.iter_any():
            now = time.monotonic()
            events.extend((now, payload) for payload in decoder.feed(chunk))
    return events


async def test_admin_routes_get_404_and_never_reach_vllm(standin_session, sidecar) -> None:
    standin_session.reset()
    async with aiohttp.ClientSession() as session:
        for path in ADMIN:
            body = orjson.dumps({"lora_name": "x", "lora_path": "/tmp/x"})
            async with session.post(
                f"{sidecar.url}{path}", data=body, headers=AUDIT_HEADERS
            ) as response:
                assert response.status == 404, path
        # the stand-in has these routes and counts what reaches them
        async with session.post(f"{standin_session.url}/v1/load_lora_adapter") as response:
            assert response.status == 200
    hits = [r["path"] for r in standin_session.requests()]
    assert hits == ["/v1/load_lora_adapter"]  # only the direct call


async def test_admin_routes_stay_refused_under_a_pattern_that_covers_them(
    standin_session, start_sidecar
) -> None:
    wide = start_sidecar(standin_session.url, ALLOWED_PATHS="/*")
    standin_session.reset()
    async with aiohttp.ClientSession() as session:
        for path in ADMIN:
            async with session.post(f"{wide.url}{path}", json={}, headers=AUDIT_HEADERS) as r:
                assert r.status == 404, path
        async with session.get(f"{wide.url}/v1/models", headers=AUDIT_HEADERS) as response:
            assert response.status == 200  # the pattern does forward what is not admin
    # uvicorn drops a fragment from the request target; so does the sidecar's check
    for target in (b"/sleep#x", b"/v1/load_lora_adapter?a=1#b", b"/pause#"):
        assert (await raw_exchange(wide.url, b"POST " + target, {}))[0] == 404, target
    assert [r["path"] for r in standin_session.requests()] == ["/v1/models"]


async def test_admin_routes_the_real_stack_adds_stay_refused_under_a_wide_pattern(
    standin_session, start_sidecar
) -> None:
    """Admin routes vLLM's server stack reaches by ways its own route decorators do not show.

    Checked against fastapi 0.136 / starlette 1.10 / uvicorn 0.54 (httptools and h11) /
    model-hosting-container-standards 0.1.16, the versions vLLM 0.33.0 requires:
    - with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`, the SageMaker bootstrap vLLM runs on its
      app (`launchers/app.py`) mounts its LoRA handlers as `POST /adapters` (load) and
      `DELETE /adapters/{adapter_name}` (unload);
    - with `--root-path R` (VLLM_EXTRA_ARGS), Starlette routes `R/sleep` as `/sleep`.
    The stand-in journals every request it receives, routed or not.
    """
    wide = start_sidecar(standin_session.url, ALLOWED_PATHS="/*")
    standin_session.reset()
    async with aiohttp.ClientSession() as session:
        load = {"name": "x", "src": "/tmp/x"}
        async with session.post(f"{wide.url}/adapters", json=load, headers=AUDIT_HEADERS) as r:
            assert r.status == 404
        async with session.delete(f"{wide.url}/adapters/x", headers=AUDIT_HEADERS) as r:
            assert r.status == 404
        for path in ("/llm/sleep", "/api/v1/load_lora_adapter", "/v1/pause"):
            async with session.post(f"{wide.url}{path}", json={}, headers=AUDIT_HEADERS) as r:
                assert r.status == 404, path
        async with session.get(f"{wide.url}/v1/models", headers=AUDIT_HEADERS) as response:
            assert response.status == 200
    assert [r["path"] for r in standin_session.requests()] == ["/v1/models"]


async def test_only_a_post_of_the_response_named_render_is_refused(
    standin_session, sidecar
) -> None:
    """vLLM routes `POST /v1/responses/render` to scale-out's render route and
    `GET /v1/responses/render` to the client route `GET /v1/responses/{response_id}`."""
    standin_session.reset()
    async with aiohttp.ClientSession() as session:
        url = f"{sidecar.url}/v1/responses/render"
        async with session.post(url, json={}, headers=AUDIT_HEADERS) as response:
            assert response.status == 404
        async with session.get(url, headers=AUDIT_HEADERS) as response:
            assert response.headers["server"] == "uvicorn"  # the stand-in answered
    hits = [(r["method"], r["path"]) for r in standin_session.requests()]
    assert hits == [("GET", "/v1/responses/render")]


async def raw_exchange(url: str, request_line: bytes, extra: dict[str, str]) -> tuple[int, bytes]:
    """Status and body of one request sent byte for byte, on a connection closed after it."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    fields = {**AUDIT_HEADERS, **extra}
    headers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields.items())
    writer.write(
        request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n" + headers + b"\r\n{}"
    )
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: " in head.lower()  # the proxy's error answers have one
    return int(head.split()[1]), body


@pytest.mark.parametrize("spelling", ["true", 1, "yes", "On", 1.0])
async def test_every_stream_spelling_has_usage_in_the_record(sidecar, spelling) -> None:
    request_id = rid()
    body = {**CHAT, "stream": spelling, "max_tokens": 4}
    events = await stream_events(f"{sidecar.url}/v1/chat/completions", body, request_id)
    payloads = [p for _, p in events]
    assert payloads[-1] == b"[DONE]"
    assert not any(b'"choices":[]' in p for p in payloads)  # the client did not ask
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["usage"]["completionTokens"] == 4
    assert record["request"]["body"]["stream"] == spelling  # recorded as the client sent it


@pytest.mark.parametrize("include", ["true", 1, "yes", "t"])
async def test_usage_asked_in_any_spelling_reaches_the_client(sidecar, include) -> None:
    request_id = rid()
    body = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": include}}
    events = await stream_events(f"{sidecar.url}/v1/chat/completions", body, request_id)
    usage = [orjson.loads(p) for _, p in events if b'"choices":[]' in p]
    assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 3
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["request"]["body"]["stream_options"] == {"include_usage": include}
    assert record["usage"]["completionTokens"] == 3


async def test_n3_choices_arrive_live_through_the_sidecar(standin_session, sidecar) -> None:
    body = {**CHAT, "stream": True, "n": 3, "max_tokens": 6}
    # `created` pinned: direct and proxied may fall in different seconds.
    headers_ms = {"x-standin-itl-ms": "40", "x-standin-created": "1700000000"}
    request_id = rid()

    async def run(url: str) -> list[tuple[float, bytes]]:
        decoder = SSEDecoder()
        out: list[tuple[float, bytes]] = []
        headers = {**AUDIT_HEADERS, **headers_ms, "x-request-id": request_id}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            async for chunk in response.content.iter_any():
                now = time.monotonic()
                out.extend((now, p) for p in decoder.feed(chunk))
        return out

    proxied = await run(f"{sidecar.url}/v1/chat/completions")
    direct = await run(f"{standin_session.url}/v1/chat/completions")
    # the same events (the sidecar's own usage chunk removed), in the same order
    assert [p for _, p in proxied] == [p for _, p in direct]
    for events in (proxied, direct):
        per_choice: dict[int, list[float]] = {}
        for at, payload in events:
            if payload != b"[DONE]":
                for choice in orjson.loads(payload)["choices"]:
                    per_choice.setdefault(choice["index"], []).append(at)
        assert sorted(per_choice) == [0, 1, 2]
        for times in per_choice.values():
            # role + first token together, then one inter-token delay per token: a choice
            # held back and released in a burst would show gaps near zero
            gaps = [b - a for a, b in itertools.pairwise(times[1:])]
            assert sum(1 for gap in gaps if gap >= 0.02) * 2 >= len(gaps), gaps


async def test_a_fresh_sidecar_learns_the_fingerprint_from_any_answer(
    standin_session, start_sidecar
) -> None:
    """After one non-streamed answer, the first stream with n > 1 already sends each
    finished choice at once (its fingerprint is known), not when the usage chunk comes."""
    sidecar = start_sidecar(standin_session.url)
    async with aiohttp.ClientSession() as session:
        plain = {**CHAT, "max_tokens": 2}
        async with session.post(
            f"{sidecar.url}/v1/chat/completions", json=plain, headers=AUDIT_HEADERS
        ) as response:
            assert "system_fingerprint" in orjson.loads(await response.read())
        body = {**CHAT, "stream": True, "n": 2, "max_tokens": 8}
        headers = {**AUDIT_HEADERS, "x-standin-itl-ms": "60", "x-standin-choice-tokens": "1,8"}
        decoder = SSEDecoder()
        last: dict[int, float] = {}
        async with session.post(
            f"{sidecar.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            async for chunk in response.content.iter_any():
                now = time.monotonic()
                for payload in decoder.feed(chunk):
                    if payload != b"[DONE]":
                        for choice in orjson.loads(payload)["choices"]:
                            last[choice["index"]] = now
    # the short choice finished ~7 inter-token delays before the long one
    assert last[1] - last[0] > 3 * 0.06, last


# --- Messages, Responses, ragged n > 1, terminal events, first-byte latency (issue #11) ---

MESSAGES = {
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Describe the audit trail"}],
}
RESPONSES = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "input": "Describe the audit trail"}


async def raw_stream(
    url: str, body: dict, headers: dict[str, str]
) -> tuple[float, list[tuple[float, str | None, bytes]]]:
    """(time the response head arrived, each SSE event as (arrival, event name, data)),
    all times from the moment the request was sent."""
    events: list[tuple[float, str | None, bytes]] = []
    buffer = b""
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
            head_at = time.monotonic() - start
            assert response.status == 200, await response.read()
            async for chunk in response.content.iter_any():
                now = time.monotonic() - start
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    name, data = None, b""
                    for line in block.split(b"\n"):
                        if line.startswith(b"event: "):
                            name = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data = line[6:]
                    if data:
                        events.append((now, name, data))
    return head_at, events


def audit_headers(request_id: str, **extra: str) -> dict[str, str]:
    return {
        **AUDIT_HEADERS,
        "x-request-id": request_id,
        "content-type": "application/json",
        **extra,
    }


async def test_messages_stream_with_thinking_is_recorded(sidecar) -> None:
    request_id = rid()
    body = {**MESSAGES, "stream": True, "thinking": {"type": "adaptive"}}
    _, events = await raw_stream(f"{sidecar.url}/v1/messages", body, audit_headers(request_id))
    names = [name for _, name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "[DONE]" not in str(names)
    deltas = [
        orjson.loads(data)["delta"] for _, name, data in events if name == "content_block_delta"
    ]
    text = "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    thinking = "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta")
    assert text and thinking and any(d["type"] == "signature_delta" for d in deltas)
    usage = orjson.loads(events[-2][2])["usage"]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "completed" and record["statusCode"] == 200
    choice = record["response"]["choices"][0]
    assert choice["content"] == text and choice["reasoningContent"] == thinking
    assert choice["finishReason"] == "end_turn"
    assert record["usage"]["promptTokens"] == usage["input_tokens"]
    assert record["usage"]["completionTokens"] == usage["output_tokens"] > 0


async def test_messages_stream_with_tool_use_is_recorded(sidecar) -> None:
    request_id = rid()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    body = {**MESSAGES, "stream": True, "tools": tools}
    headers = audit_headers(request_id, **{"x-standin-scenario": "tool_calls"})
    _, events = await raw_stream(f"{sidecar.url}/v1/messages", body, headers)
    starts = [
        orjson.loads(data)["content_block"]
        for _, name, data in events
        if name == "content_block_start"
    ]
    assert [block["type"] for block in starts] == ["tool_use", "tool_use"]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    choice = record["response"]["choices"][0]
    calls = choice["toolCalls"]
    assert [call["id"] for call in calls] == [block["id"] for block in starts]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_weather"]
    for call in calls:
        assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
    assert choice["finishReason"] == "tool_use" and record["usage"]["completionTokens"] > 0


async def test_messages_not_streamed_is_recorded(sidecar) -> None:
    request_id = rid()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sidecar.url}/v1/messages",
            data=orjson.dumps(MESSAGES),
            headers=audit_headers(request_id),
        ) as response,
    ):
        assert response.status == 200
        answer = await response.json()
    assert answer["type"] == "message" and answer["content"][0]["type"] == "text"
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["response"]["body"] == answer
    assert record["usage"]["completionTokens"] == answer["usage"]["output_tokens"]
    assert record["usage"]["promptTokens"] == answer["usage"]["input_tokens"]


async def test_responses_stream_is_recorded(sidecar) -> None:
    request_id = rid()
    body = {**RESPONSES, "stream": True}
    _, events = await raw_stream(f"{sidecar.url}/v1/responses", body, audit_headers(request_id))
    names = [name for _, name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    sequence = [orjson.loads(data)["sequence_number"] for _, _, data in events]
    assert sequence == list(range(len(events)))
    text = "".join(
        orjson.loads(data)["delta"]
        for _, name, data in events
        if name == "response.output_text.delta"
    )
    final = orjson.loads(events[-1][2])["response"]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    choice = record["response"]["choices"][0]
    assert choice["content"] == text != ""
    assert choice["finishReason"] == "completed"
    assert record["usage"]["promptTokens"] == final["usage"]["input_tokens"]
    assert record["usage"]["completionTokens"] == final["usage"]["output_tokens"]


async def test_responses_stream_cut_by_vllm_is_recorded_with_a_reason(sidecar) -> None:
    """vLLM drops the connection on a generation error (no error event): the record says so."""
    request_id = rid()
    body = {**RESPONSES, "stream": True}
    headers = audit_headers(request_id, **{"x-standin-scenario": "error_midstream"})
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw_stream(f"{sidecar.url}/v1/responses", body, headers)
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] != "completed"
    assert record["error"] and record["error"].get("message")


def _choice_events(
    events: list[tuple[float, str | None, bytes]],
) -> dict[int, list[tuple[float, dict]]]:
    per_choice: dict[int, list[tuple[float, dict]]] = {}
    for at, _, data in events:
        if data == b"[DONE]":
            continue
        chunk = orjson.loads(data)
        for choice in chunk["choices"]:
            per_choice.setdefault(choice["index"], []).append((at, chunk))
    return per_choice


async def test_n3_choices_finishing_at_different_steps_arrive_live(
    standin_session, sidecar
) -> None:
    itl = 0.06
    controls = {
        "x-standin-itl-ms": str(itl * 1000),
        "x-standin-choice-tokens": "1,4,8",
        "x-standin-created": "1700000000",
    }
    body = {**CHAT, "stream": True, "n": 3}
    # A sidecar learns vLLM's fingerprint from its first usage chunk; until then a
    # terminal chunk is held to the end of its stream (sse.UsageChunkFilter). Warm up.
    await raw_stream(
        f"{sidecar.url}/v1/chat/completions", {**CHAT, "stream": True}, audit_headers(rid())
    )
    request_id = rid()
    headers = audit_headers(request_id, **controls)
    _, proxied = await raw_stream(f"{sidecar.url}/v1/chat/completions", body, headers)
    _, direct = await raw_stream(f"{standin_session.url}/v1/chat/completions", body, headers)
    # byte for byte what vLLM sends (the usage chunk the sidecar asked for removed), so
    # the fingerprint is exactly on each choice's terminal chunk and nowhere else
    assert [data for _, _, data in proxied] == [data for _, _, data in direct]
    for _, _, data in proxied[:-1]:
        chunk = orjson.loads(data)
        finished = chunk["choices"][0]["finish_reason"] is not None
        assert ("system_fingerprint" in chunk) == finished
    finish = {}
    for events in (proxied, direct):
        per_choice = _choice_events(events)
        assert [len(per_choice[i]) for i in range(3)] == [3, 6, 10]  # role + tokens + EOS
        finish[id(events)] = [per_choice[i][-1][0] for i in range(3)]
    p_finish, d_finish = finish[id(proxied)], finish[id(direct)]
    # choice 0 finishes at step 2, choice 1 at step 5, choice 2 at step 9: through the
    # sidecar each finish arrives when vLLM sent it, not in a burst at the end
    for earlier, later, steps in ((0, 1, 3), (1, 2, 4)):
        assert p_finish[later] - p_finish[earlier] > steps * itl * 0.5, p_finish
        assert d_finish[later] - d_finish[earlier] > steps * itl * 0.5, d_finish
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    choices = record["response"]["choices"]
    assert [c["finishReason"] for c in choices] == ["stop", "stop", "stop"]
    assert record["usage"]["completionTokens"] == 2 + 5 + 9


async def test_batched_prompts_stream_every_choice_live(standin_session, sidecar) -> None:
    body = {
        "model": CHAT["model"],
        "prompt": ["first prompt", "second prompt"],
        "n": 2,
        "stream": True,
        "max_tokens": 32,
    }
    controls = {
        "x-standin-itl-ms": "50",
        "x-standin-choice-tokens": "1,6",
        "x-standin-created": "1700000000",
    }
    warm_up = {**body, "prompt": "warm up", "n": 1}
    await raw_stream(f"{sidecar.url}/v1/completions", warm_up, audit_headers(rid()))
    request_id = rid()
    headers = audit_headers(request_id, **controls)
    _, proxied = await raw_stream(f"{sidecar.url}/v1/completions", body, headers)
    _, direct = await raw_stream(f"{standin_session.url}/v1/completions", body, headers)
    assert [data for _, _, data in proxied] == [data for _, _, data in direct]
    per_choice = _choice_events(proxied)
    assert sorted(per_choice) == [0, 1, 2, 3]
    short_done = max(per_choice[i][-1][0] for i in (0, 2))
    long_done = min(per_choice[i][-1][0] for i in (1, 3))
    assert long_done - short_done > 3 * 0.05 * 0.5
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert [c["index"] for c in record["response"]["choices"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("path", "body", "terminal"),
    [
        ("/v1/messages", {**MESSAGES, "stream": True}, "message_stop"),
        ("/v1/responses", {**RESPONSES, "stream": True}, "response.completed"),
    ],
)
async def test_terminal_event_is_sent_only_after_the_record_is_spooled(
    standin_session, start_sidecar, path, body, terminal
) -> None:
    """SIGKILL the sidecar the moment the client holds the terminal event: the record was
    on disk already, so the next process on the same spool ships it. (vLLM ends its body
    right after the terminal event, so the record is on disk by then even without the
    hold: this test passes with the hold disabled. The deterministic form, which fails
    then, is `test_the_terminal_event_waits_for_the_body_end_and_the_record_on_disk`.)"""
    # a flush interval far longer than the test: nothing is shipped before the kill
    sidecar = start_sidecar(standin_session.url, AUDIT_FLUSH_INTERVAL_S="600")
    request_id = rid()
    headers = audit_headers(request_id)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sidecar.url}{path}", data=orjson.dumps(body), headers=headers) as response,
    ):
        received = b""
        async for chunk in response.content.iter_any():
            received += chunk
            if f"event: {terminal}\n".encode() in received and received.endswith(b"\n\n"):
                sidecar.kill()
                break
    assert f"event: {terminal}\n".encode() in received
    assert sidecar.audit().records == [] or request_id not in sidecar.audit().by_id()
    sidecar.proc.wait(10)
    sidecar.restart(AUDIT_FLUSH_INTERVAL_S="0.3")
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "completed"
    assert record["response"]["choices"][0]["content"]


@pytest.mark.parametrize("ttft", [0.05, 0.0])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/messages", {**MESSAGES, "stream": True}),
    ],
)
async def test_head_and_first_event_are_not_held_for_the_next_token(
    standin_session, sidecar, path, body, ttft
) -> None:
    """vLLM's timing: role + first token together after the TTFT, then ≥ 100 ms until the
    next token. Through the sidecar the head and the first event must arrive about when
    they do direct — a hold for the next upstream chunk would add the whole 150 ms. With
    a TTFT of 0 the head and the first events reach the sidecar in one read, the case
    where the old relay lost its wake-up (issue #11, item 1)."""
    itl = 0.15
    controls = {
        "x-standin-ttft-ms": str(ttft * 1000),
        "x-standin-itl-ms": str(itl * 1000),
        "x-standin-tokens": "2",
    }
    direct = []
    for _ in range(2):
        url = f"{standin_session.url}{path}"
        head_at, events = await raw_stream(url, body, audit_headers(rid(), **controls))
        direct.append((head_at, events[0][0]))
    # the hold was a race (about one request in two): try several
    for _ in range(6):
        url = f"{sidecar.url}{path}"
        head_at, events = await raw_stream(url, body, audit_headers(rid(), **controls))
        first = events[0][0]
        second = next(at for at, _, _ in events if at > first + itl / 2)
        print(f"{path} ttft {ttft * 1000:.0f} ms: head direct {direct[0][0] * 1000:.1f} ms "
              f"proxied {head_at * 1000:.1f} ms; first event direct {direct[0][1] * 1000:.1f} ms "
              f"proxied {first * 1000:.1f} ms")  # fmt: skip
        # generous bounds: before vLLM sent the second token, whatever the machine's load
        assert head_at < ttft + itl / 2
        assert first < ttft + itl / 2
        assert first < second - itl / 2


class _OneReadUpstream(socketserver.ThreadingTCPServer):
    """An upstream that sends the response head, the role event and the first token in
    ONE write (one TCP segment on loopback: one read on the sidecar's side), then waits
    `gap` seconds before the rest — vLLM's timing with the TTFT already spent. Answers
    `GET /health` with 200. Runs in its own threads: the test's loop stays free."""

    daemon_threads = True
    allow_reuse_address = True
    gap = 0.3

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OneReadHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _OneReadHandler(socketserver.StreamRequestHandler):
    server: _OneReadUpstream

    def handle(self) -> None:
        while head := self._read_head():
            path = head.split(b" ", 2)[1]
            if path == b"/health":
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                continue
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                + _chunk(_event({"role": "assistant", "content": ""}))
                + _chunk(_event({"content": "Hello"}))
            )
            time.sleep(self.server.gap)
            self.wfile.write(
                _chunk(_event({"content": " there"}, "stop"))
                + _chunk(b"data: [DONE]\n\n")
                + b"0\r\n\r\n"
            )

    def _read_head(self) -> bytes:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline()
            if not line:
                return b""
            head += line
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.rfile.read(length)
        return head


def _event(delta: dict, finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": CHAT["model"],
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _ReplayUpstream(socketserver.ThreadingTCPServer):
    """Replays an answer vLLM (the stand-in) gave, chunk for chunk, then waits `gap`
    seconds before it ends the chunked body: it sets `ended` and only then writes the
    terminator. Answers `GET /health` with 200. Runs in its own threads."""

    daemon_threads = True
    allow_reuse_address = True
    gap = 0.5

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _ReplayHandler)
        self.chunks = chunks
        self.ended = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ReplayHandler(_OneReadHandler):
    server: _ReplayUpstream  # type: ignore[assignment]

    def handle(self) -> None:
        while head := self._read_head():
            if head.split(b" ", 2)[1] == b"/health":
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                continue
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                + b"".join(_chunk(chunk) for chunk in self.server.chunks)
            )
            self.wfile.flush()
            time.sleep(self.server.gap)
            self.server.ended.set()  # the end step: after this, the body's end goes out
            self.wfile.write(b"0\r\n\r\n")


def spooled_records(spool_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record in the sidecar's spool directory now (its open and sealed segments
    as they are on disk, read while the sidecar runs), by request id."""
    records: dict[str, dict[str, Any]] = {}
    for path in spool_dir.iterdir():
        if path.suffix in (".open", ".seg"):
            for frame in decode_frames(path.read_bytes()[HEADER_SIZE:], HEADER_SIZE):
                if isinstance(frame, Frame):
                    record = orjson.loads(frame.payload)
                    records[record["requestId"]] = record
    return records


@pytest.mark.parametrize(
    ("path", "body", "terminal"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            b"data: [DONE]\n\n",
        ),
        ("/v1/messages", {**MESSAGES, "stream": True}, b"event: message_stop\n"),
        ("/v1/responses", {**RESPONSES, "stream": True}, b"event: response.completed\n"),
    ],
    ids=["chat-done", "messages-message_stop", "responses-completed"],
)
async def test_the_terminal_event_waits_for_the_body_end_and_the_record_on_disk(
    standin_session, start_sidecar, path, body, terminal
) -> None:
    """Deterministic: vLLM's terminal event, then 0.5 s before vLLM ends the chunked body.
    The moment the client holds the terminal event's bytes, the upstream has ended its
    body and the exchange's record is in the sidecar's spool directory. (With the
    terminal event not held, it arrives 0.5 s before the end and before the record.)"""
    reply = standin_session.raw("POST", path, body, {"x-standin-tokens": "4"})
    assert reply.status == 200 and reply.chunks
    assert terminal in reply.chunks[-1]  # the terminal event is vLLM's last chunk
    upstream = _ReplayUpstream(reply.chunks)
    try:
        # nothing shipped (and so removed from the spool) during the test
        sidecar = start_sidecar(upstream.url, AUDIT_FLUSH_INTERVAL_S="600")
        request_id = rid()
        received = b""
        at_terminal: tuple[bool, dict[str, dict[str, Any]]] | None = None
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sidecar.url}{path}", data=orjson.dumps(body), headers=audit_headers(request_id)
            ) as response,
        ):
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
                at = received.find(terminal)
                if at_terminal is None and at >= 0 and b"\n\n" in received[at:]:
                    # the terminal event's bytes are here: what is true at this moment?
                    at_terminal = (upstream.ended.is_set(), spooled_records(sidecar.spool_dir))
        assert received == reply.body  # vLLM's answer, whole
        assert at_terminal is not None
        ended, spooled = at_terminal
        assert request_id in spooled, "the client held the terminal event before the record"
        assert ended, "the terminal event left before vLLM ended its body"
        record = spooled[request_id]
        assert record["outcome"] == "completed"
        assert record["response"]["choices"][0]["content"]
    finally:
        upstream.shutdown()
        upstream.server_close()


async def test_bytes_that_came_with_the_head_are_relayed_before_the_next_upstream_read(
    start_sidecar,
) -> None:
    """Deterministic form of issue #11's item 1: the head and the first two events reach
    the sidecar in one read, the next bytes 300 ms later. The old relay lost its wake-up
    in exactly this case and held the first events until the next read (fails on c7edefc:
    first event at ~300 ms); every request here must get them at once."""
    upstream = _OneReadUpstream()
    try:
        sidecar = start_sidecar(upstream.url)
        for _ in range(3):  # a fresh upstream connection, then reused ones
            url = f"{sidecar.url}/v1/chat/completions"
            head_at, events = await raw_stream(url, {**CHAT, "stream": True}, audit_headers(rid()))
            first, last = events[0][0], events[-1][0]
            assert head_at < upstream.gap / 2
            assert first < upstream.gap / 2, f"first event held for {first * 1000:.0f} ms"
            assert last >= upstream.gap  # the rest really came later
            # ... and in vLLM's order, though no usage chunk came (a cold fingerprint
            # memo held the terminal chunk for one: sse.UsageChunkFilter)
            assert [data for _, _, data in events][-1] == b"[DONE]"
    finally:
        upstream.shutdown()
        upstream.server_close()


async def test_the_first_events_leave_in_the_call_that_read_the_head(
    moto_server, aws_endpoint_env, tmp_path, monkeypatch
) -> None:
    """No loop turn between vLLM's first bytes and the client: the client's head and the
    events that came in the same read as vLLM's head are written inside the upstream
    connection's `data_received` that read them. (On 4408684 they were written a turn
    later, when the handler's task resumed: behind every other callback of that turn,
    ~1 ms at p99 with 128 streams, bench/README.md "The head hook".) The application
    runs in this process so that the calls can be seen."""
    for name, value in aws_endpoint_env.items():
        monkeypatch.setenv(name, value)
    reads = itertools.count(1)
    current: list[int] = []  # the upstream read being handled, if any
    seen: list[tuple[str, int | None, bytes]] = []  # (what, upstream read, bytes)

    real_read, real_open, real_write = (
        Connection.data_received,
        ClientStream.open,
        ClientStream.write,
    )

    def data_received(self: Connection, data: bytes) -> None:
        current.append(next(reads))
        try:
            real_read(self, data)
        finally:
            current.pop()

    def open_stream(response, request, **options):  # type: ignore[no-untyped-def]
        seen.append(("open", current[-1] if current else None, b""))
        return real_open(response, request, **options)

    def write(self: ClientStream, data: bytes) -> None:
        seen.append(("write", current[-1] if current else None, data))
        real_write(self, data)

    monkeypatch.setattr(Connection, "data_received", data_received)
    monkeypatch.setattr(ClientStream, "open", open_stream)
    monkeypatch.setattr(ClientStream, "write", write)
    upstream = _OneReadUpstream()
    try:
        async with sidecar_app(upstream.url, moto_server, tmp_path) as (_, base):
            for _ in range(3):  # a fresh upstream connection, then reused ones
                seen.clear()
                url = f"{base}/v1/chat/completions"
                await raw_stream(url, {**CHAT, "stream": True}, audit_headers(rid()))
                what = [(kind, data[:40]) for kind, _, data in seen[:3]]
                assert [kind for kind, _, _ in seen[:3]] == ["open", "write", "write"], what
                first_read = seen[0][1]
                assert first_read is not None, "the client's head waited for a loop turn"
                assert [read for _, read, _ in seen[:3]] == [first_read] * 3, what
                assert b'"role":"assistant"' in seen[1][2] and b"Hello" in seen[2][2]
    finally:
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.parametrize("path", ["/sleep%0A", "/v1/models%0A", "/v1/chat/completions%0D%0A"])
async def test_a_path_with_a_newline_is_refused_in_the_openai_shape_and_audited(
    standin_session, sidecar, path: str
) -> None:
    standin_session.reset()
    request_id = rid()
    headers = {**AUDIT_HEADERS, "x-request-id": request_id}
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(sidecar.url + path, encoded=True), json={}, headers=headers) as r,
    ):
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"  # ours, not aiohttp's text
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "rejected" and record["statusCode"] == 404
    assert standin_session.requests() == []


@pytest.mark.parametrize(
    "request_line",
    [
        b"CONNECT 127.0.0.1:443",
        b"OPTIONS *",
        b"POST http://x/sleep",
        # aiohttp routes no CONNECT (its target is an authority), so the catch-all middleware
        # sent `CONNECT /v1/models` to the proxy, whose path check let it through: vLLM's
        # server got a CONNECT and read its target as the empty path. CONNECT names no path
        # of vLLM's.
        b"CONNECT /v1/models",
        b"CONNECT /v1/chat/completions",
    ],
)
async def test_a_target_that_is_not_a_path_is_refused_in_the_openai_shape_and_audited(
    standin_session, sidecar, request_line: bytes
) -> None:
    standin_session.reset()
    request_id = rid()
    status, body = await raw_exchange(sidecar.url, request_line, {"x-request-id": request_id})
    assert status == 404
    assert orjson.loads(body)["error"]["code"] == "not_found"
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "rejected" and record["statusCode"] == 404
    assert standin_session.requests() == []


async def test_a_refused_connect_has_its_target_in_the_record_and_the_message(
    standin_session, sidecar
) -> None:
    """aiohttp reads `CONNECT host:port` as an authority with an empty path: the record
    (and the client's message) must still say which target was asked for."""
    request_id = rid()
    line = b"CONNECT 10.0.0.7:8443"
    status, body = await raw_exchange(sidecar.url, line, {"x-request-id": request_id})
    assert status == 404
    assert "10.0.0.7:8443" in orjson.loads(body)["error"]["message"]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["method"] == "CONNECT" and record["path"] == "10.0.0.7:8443"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
@pytest.mark.parametrize("target", [b"127.0.0.1:443", b"/sleep"])
async def test_nothing_after_a_refused_connect_is_answered_unaudited(
    standin_session, sidecar, framing: bytes, target: bytes
) -> None:
    """aiohttp reads the bytes after a CONNECT's head as whatever comes next on the
    connection, not as its body: a CONNECT with a body, then a request, got our 404 and
    then aiohttp's plain-text 400 for the body read as a request line, with no record.
    A CONNECT closes the connection instead: one answer, one record."""
    standin_session.reset()
    request_id, next_id = rid(), rid()
    fields = {**AUDIT_HEADERS, "x-request-id": request_id}
    head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields.items())
    following = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\n\r\n" % next_id.encode()
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n" % target + head + framing + following)
    async with asyncio.timeout(10):
        response = await reader.read()  # the sidecar closes the connection
    writer.close()
    assert response.count(b"HTTP/1.") == 1, response
    assert response.startswith(b"HTTP/1.1 404 ") and b"\r\nConnection: close\r\n" in response
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "rejected" and record["statusCode"] == 404
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sidecar.url}/health") as r:
            assert r.status == 200
        async with session.post(
            f"{sidecar.url}/v1/chat/completions", json=CHAT, headers=AUDIT_HEADERS
        ) as r:
            assert r.status == 200
    hits = [r["path"] for r in standin_session.requests() if r["path"] != "/health"]
    assert hits == ["/v1/chat/completions"]  # the /health probe's own hit aside


async def test_a_refused_admin_route_records_who_asked(standin_session, start_sidecar) -> None:
    """A probe of an admin route is the request a security review looks for first: its
    record names the caller from the audit headers and the API key from the edge's
    headers, though the path is refused before they would otherwise be read."""
    trusting = start_sidecar(standin_session.url, TRUST_EDGE_HEADERS="true")
    standin_session.reset()
    request_id = rid()
    headers = {
        **AUDIT_HEADERS,
        "x-request-id": request_id,
        "x-edge-api-key-id": "key-7f3a",
        "x-edge-request-id": "edge-1",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{trusting.url}/v1/load_lora_adapter", json={}, headers=headers) as r,
    ):
        assert r.status == 404
    record = trusting.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "rejected"
    assert (record["source"], record["userId"], record["requestType"]) == (
        "test-app",
        "tester",
        "chat",
    )
    assert (record["apiKeyId"], record["edgeRequestId"]) == ("key-7f3a", "edge-1")
    assert standin_session.requests() == []


async def test_a_refused_path_with_unreadable_identity_headers_is_still_a_404(
    standin_session, sidecar
) -> None:
    """The path decides the answer: identity headers that would be a 400 elsewhere (here
    repeated) leave the record's caller unknown, not the 404 changed."""
    request_id = rid()
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
        b"x-request-id: %s\r\nx-llm-source: s\r\nx-llm-user: a\r\nx-llm-user: b\r\n"
        b"x-llm-request-type: chat\r\n\r\n{}" % request_id.encode()
    )
    async with asyncio.timeout(10):
        response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 404 "), response
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["userId"] == "unknown" and record["outcome"] == "rejected"


@pytest.mark.parametrize(
    ("path", "status", "outcome"), [("/v1/models", 200, "completed"), ("/sleep", 404, "rejected")]
)
async def test_an_upgrade_request_is_answered_and_the_connection_closed(
    standin_session, sidecar, path: str, status: int, outcome: str
) -> None:
    """`curl --http2 http://...` asks to upgrade to h2c on its first request. Nothing is
    upgraded (the upgrade headers are hop-by-hop and never reach vLLM): the request is
    answered in HTTP/1.1. aiohttp then read everything after it as the upgraded protocol's
    bytes, so the next request on that keep-alive connection was never answered. The answer
    now closes the connection, and the client's next request goes on a new one."""
    standin_session.reset()
    request_id = rid()
    fields = {**AUDIT_HEADERS, "x-request-id": request_id}
    head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields.items())
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n%s\r\n"
        % (path.encode(), head)
    )
    async with asyncio.timeout(10):
        response = await reader.read()  # ends: the sidecar closes the connection
    writer.close()
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:200]
    assert b"Connection: close" in response.partition(b"\r\n\r\n")[0].split(b"\r\n")
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == outcome
    for seen in standin_session.requests():
        assert not {"upgrade", "http2-settings"} & {k.lower() for k in seen["headers"]}
