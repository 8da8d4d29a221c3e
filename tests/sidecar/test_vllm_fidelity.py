"""vLLM 0.33 fidelity through the real sidecar process and the stand-in (issues #10 and #11).

Admin routes are never forwarded (the stand-in counts their hits), every spelling
of `stream` vLLM accepts gets usage recorded, usage the client asked for in any
spelling stays in its stream, and with n=3 every choice reaches the client as it
is generated.
"""

from __future__ import annotations

import itertools
import time
import uuid

import aiohttp
import orjson
import pytest

from sidecar_audit.sse import SSEDecoder
from tests.sidecar_fixture import AUDIT_HEADERS

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
    headers_ms = {"x-standin-itl-ms": "40"}
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
