"""The sidecar as a real process between real clients and the vLLM stand-in, with S3 on moto.

Each test checks what the client sees (bytes, status, errors) and what lands
in S3 (records decoded and checked field by field).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import uuid
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDict

from tests.procs import free_port
from tests.sidecar_fixture import AUDIT_HEADERS

CHAT = {
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "messages": [{"role": "user", "content": "Say hello to the auditors"}],
}


def rid() -> str:
    return f"t-{uuid.uuid4().hex}"


async def post(
    url: str,
    body: bytes | dict,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            url, data=data, headers={"content-type": "application/json", **(headers or {})}
        ) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


def client(sidecar: Any, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{sidecar.url}/v1",
        api_key="sk-test-SECRET-123",
        default_headers={**AUDIT_HEADERS, **headers},
        max_retries=0,
    )


async def test_stream_is_byte_identical_direct_and_proxied(standin_session, sidecar) -> None:
    for options in ({"include_usage": True}, None):
        body = {**CHAT, "stream": True, "max_tokens": 12}
        if options:
            body["stream_options"] = options
        ids = [rid(), rid()]
        direct = await post(
            f"{standin_session.url}/v1/chat/completions",
            body,
            {"x-request-id": ids[0], "x-standin-created": "1700000000"},
        )
        proxied = await post(
            f"{sidecar.url}/v1/chat/completions",
            body,
            {**AUDIT_HEADERS, "x-request-id": ids[0], "x-standin-created": "1700000000"},
        )
        assert proxied[0] == direct[0] == 200
        assert proxied[2] == direct[2], f"stream differs (stream_options={options})"
        assert proxied[1]["Content-Type"] == direct[1]["Content-Type"]
        assert proxied[1]["X-Request-Id"] == ids[0]
    # Without include_usage the client got no usage chunk, yet the record has usage.
    assert b'"usage"' not in proxied[2]
    records = sidecar.wait_for_records([ids[0]]).by_id()
    assert records[ids[0]]["usage"]["completionTokens"] == 12


def test_openai_sdk_stream_record_field_by_field(sidecar) -> None:
    request_id = rid()
    stream = client(
        sidecar, **{"x-request-id": request_id, "x-llm-project": "proj-7"}
    ).chat.completions.create(**CHAT, stream=True, max_tokens=5)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["schemaVersion"] == 1
    assert record["requestId"] == request_id
    assert record["method"] == "POST"
    assert record["path"] == "/v1/chat/completions"
    assert record["query"] == ""
    assert record["timestamp"].endswith("Z") and len(record["timestamp"]) == 27
    assert (record["source"], record["userId"], record["requestType"], record["projectId"]) == (
        "test-app",
        "tester",
        "chat",
        "proj-7",
    )
    assert record["statusCode"] == 200
    assert record["outcome"] == "completed" and record["error"] is None
    assert record["stream"] is True
    assert record["model"] == CHAT["model"]
    assert record["usage"]["completionTokens"] == 5
    assert record["usage"]["totalTokens"] == (record["usage"]["promptTokens"] + 5)
    assert 0 < record["ttftMs"] <= record["latencyMs"]
    choice = record["response"]["choices"][0]
    assert choice["content"] == text
    assert choice["finishReason"] == "length"
    assert record["response"]["events"] >= 7  # role chunk, 5 tokens, usage, [DONE]
    assert record["response"]["body"] is None
    assert len(record["response"]["sha256"]) == 64
    assert record["request"]["body"]["messages"] == CHAT["messages"]
    assert record["request"]["body"].get("stream_options") is None  # what the client sent
    assert record["request"]["headers"]["authorization"] == "[REDACTED]"
    assert record["request"]["truncated"] is False
    assert record["sidecar"]["version"] and record["sidecar"]["pid"] > 0


def test_openai_sdk_non_stream_chat_and_completions(sidecar) -> None:
    sdk = client(sidecar)
    chat = sdk.chat.completions.with_raw_response.create(**CHAT, max_tokens=4)
    completion = sdk.completions.with_raw_response.create(
        model=CHAT["model"], prompt="Once upon a time", max_tokens=3
    )
    ids = [chat.headers["x-request-id"], completion.headers["x-request-id"]]
    records = sidecar.wait_for_records(ids).by_id()
    chat_record = records[ids[0]]
    parsed = chat.parse()
    assert chat_record["response"]["body"]["choices"][0]["message"]["content"] == (
        parsed.choices[0].message.content
    )
    assert chat_record["usage"] == {
        "promptTokens": parsed.usage.prompt_tokens,
        "completionTokens": parsed.usage.completion_tokens,
        "totalTokens": parsed.usage.total_tokens,
    }
    assert chat_record["ttftMs"] is None and chat_record["stream"] is False
    assert chat_record["response"]["choices"] is None
    completion_record = records[ids[1]]
    assert completion_record["path"] == "/v1/completions"
    assert completion_record["request"]["body"]["prompt"] == "Once upon a time"
    assert completion_record["usage"]["completionTokens"] == 3


def test_tool_call_stream_reassembled(sidecar) -> None:
    request_id = rid()
    stream = client(
        sidecar, **{"x-request-id": request_id, "x-standin-scenario": "tool_calls"}
    ).chat.completions.create(
        **CHAT,
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert calls
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    recorded = record["response"]["choices"][0]["toolCalls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in recorded] == [
        (c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())
    ]
    for call in recorded:
        orjson.loads(call["function"]["arguments"])  # complete JSON after merging
    assert record["response"]["choices"][0]["finishReason"] == "tool_calls"


def test_usage_recorded_when_client_asks_for_it_too(sidecar) -> None:
    request_id = rid()
    stream = client(sidecar, **{"x-request-id": request_id}).chat.completions.create(
        **CHAT, stream=True, max_tokens=3, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 3
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["usage"]["completionTokens"] == 3
    assert record["request"]["body"]["stream_options"] == {"include_usage": True}


async def test_client_disconnect_mid_stream_aborts_upstream(standin_session, sidecar) -> None:
    request_id = rid()
    body = {**CHAT, "stream": True, "max_tokens": 200}
    headers = {
        **AUDIT_HEADERS,
        "x-request-id": request_id,
        "x-standin-itl-ms": "50",
        "content-type": "application/json",
    }
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{sidecar.url}/v1/chat/completions", data=orjson.dumps(body), headers=headers
        )
        seen = b""
        while seen.count(b"\n\n") < 4:
            seen += await response.content.readany()
        response.close()  # drop the connection mid-stream
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "client_disconnected"
    assert record["error"]["type"] == "client_disconnected"
    assert record["statusCode"] == 200
    partial = record["response"]["choices"][0]["content"]
    assert partial and record["response"]["choices"][0]["finishReason"] is None
    deadline = time.monotonic() + 10
    while True:
        seen_upstream = [
            r
            for r in standin_session.requests()
            if r["headers"].get("x-request-id") == request_id
            or r["headers"].get("X-Request-Id") == request_id
        ]
        if seen_upstream and seen_upstream[-1]["outcome"] != "in_progress":
            break
        assert time.monotonic() < deadline, "upstream never finished the request"
        await asyncio.sleep(0.1)
    assert seen_upstream[-1]["outcome"] == "aborted"
    assert seen_upstream[-1]["events_sent"] < 200


async def test_upstream_down_gives_502_and_is_audited(start_sidecar) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sidecar = start_sidecar(dead)
    request_id = rid()
    status, headers, body = await post(
        f"{sidecar.url}/v1/chat/completions", CHAT, {**AUDIT_HEADERS, "x-request-id": request_id}
    )
    assert status == 502
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_unreachable"
    assert headers["X-Request-Id"] == request_id
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert (record["statusCode"], record["outcome"]) == (502, "upstream_error")
    with pytest.raises(openai.InternalServerError):
        client(sidecar).chat.completions.create(**CHAT)


async def test_upstream_timeout_gives_504_and_is_audited(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, UPSTREAM_READ_TIMEOUT_S="0.5")
    request_id = rid()
    status, _, body = await post(
        f"{sidecar.url}/v1/chat/completions",
        CHAT,
        {**AUDIT_HEADERS, "x-request-id": request_id, "x-standin-scenario": "hang"},
    )
    assert status == 504
    assert orjson.loads(body)["error"]["code"] == "upstream_timeout"
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert (record["statusCode"], record["outcome"]) == (504, "upstream_timeout")


async def test_missing_audit_header_rejected_and_audited(standin_session, sidecar) -> None:
    standin_session.reset()
    request_id = rid()
    headers = {k: v for k, v in AUDIT_HEADERS.items() if k != "x-llm-user"}
    status, _, body = await post(
        f"{sidecar.url}/v1/chat/completions", CHAT, {**headers, "x-request-id": request_id}
    )
    assert status == 400
    error = orjson.loads(body)["error"]
    assert "x-llm-user" in error["message"] and error["param"] == "x-llm-user"
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert (record["statusCode"], record["outcome"]) == (400, "rejected")
    assert record["userId"] == "unknown"
    assert record["request"]["body"] is None  # rejected before the body was read
    assert not standin_session.requests(), "a rejected request must not reach vLLM"


async def test_audit_header_check_can_be_turned_off(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, REQUIRE_AUDIT_HEADERS="false")
    status, headers, _ = await post(f"{sidecar.url}/v1/chat/completions", CHAT)
    assert status == 200
    record = sidecar.wait_for_records([headers["X-Request-Id"]]).records[0]
    assert record["source"] == "unknown" and record["outcome"] == "completed"


async def test_oversized_body_gets_413(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, MAX_REQUEST_BODY_BYTES="1000")
    request_id = rid()
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    status, _, body = await post(
        f"{sidecar.url}/v1/chat/completions", big, {**AUDIT_HEADERS, "x-request-id": request_id}
    )
    assert status == 413
    assert orjson.loads(body)["error"]["code"] == "request_too_large"
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert (record["statusCode"], record["outcome"]) == (413, "rejected")

    # Chunked upload (no content-length) is cut off the same way.
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 500

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sidecar.url}/v1/chat/completions", data=chunks(), headers=AUDIT_HEADERS
        ) as response,
    ):
        assert response.status == 413


async def test_secrets_never_reach_s3(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, REDACT_HEADERS="x-internal-token")
    secrets = {
        "authorization": "Bearer sk-live-TOPSECRET-1",
        "cookie": "session=COOKIE-SECRET-2",
        "x-api-key": "APIKEY-SECRET-3",
        "proxy-authorization": "Basic PROXY-SECRET-4",
        "x-internal-token": "CUSTOM-SECRET-5",
    }
    ids = [rid(), rid()]
    await post(
        f"{sidecar.url}/v1/chat/completions",
        CHAT,
        {**AUDIT_HEADERS, **secrets, "x-request-id": ids[0]},
    )
    await post(
        f"{sidecar.url}/v1/chat/completions",
        {**CHAT, "stream": True},
        {**AUDIT_HEADERS, **secrets, "x-request-id": ids[1]},
    )
    audit = sidecar.wait_for_records(ids)
    everything = b"".join(
        gzip.decompress(raw) if key.endswith(".gz") else raw for key, raw in audit.raw.items()
    )
    for value in secrets.values():
        assert value.split()[-1].encode() not in everything
    for record in audit.records:
        for name in secrets:
            assert record["request"]["headers"][name] == "[REDACTED]"
    # vLLM still received the credentials the client sent.
    upstream = [
        r
        for r in standin_session.requests()
        if r["headers"].get("x-request-id", r["headers"].get("X-Request-Id")) == ids[0]
    ]
    assert (
        upstream[-1]["headers"].get("authorization", upstream[-1]["headers"].get("Authorization"))
        == secrets["authorization"]
    )
    for line in sidecar.log_lines():
        for value in secrets.values():
            assert value not in line


async def test_routes_outside_the_allowlist_are_404(standin_session, sidecar) -> None:
    standin_session.reset()
    async with aiohttp.ClientSession() as session:
        for method, path in [
            ("GET", "/metrics"),
            ("POST", "/invocations"),
            ("POST", "/load"),
            ("GET", "/v1/../metrics"),
            ("GET", "/v1/%2e%2e/metrics"),
            ("POST", "/reset_prefix_cache"),
        ]:
            async with session.request(
                method, f"{sidecar.url}{path}", headers=AUDIT_HEADERS
            ) as response:
                assert response.status == 404, path
                assert (await response.json())["error"]["code"] == "not_found"
        for path in ["/v1/models", "/version"]:
            async with session.get(f"{sidecar.url}{path}", headers=AUDIT_HEADERS) as response:
                assert response.status == 200, path
    forwarded = {r["path"] for r in standin_session.requests()}
    assert forwarded == {"/v1/models", "/version"}


async def test_request_id_kept_when_valid_replaced_when_not(standin_session, sidecar) -> None:
    standin_session.reset()
    good = rid()
    _, headers, body = await post(
        f"{sidecar.url}/v1/chat/completions", CHAT, {**AUDIT_HEADERS, "x-request-id": good}
    )
    assert headers["X-Request-Id"] == good
    assert orjson.loads(body)["id"].endswith(good)  # vLLM built its id from ours
    _, headers, _ = await post(
        f"{sidecar.url}/v1/chat/completions",
        CHAT,
        {**AUDIT_HEADERS, "x-request-id": "bad id/../x#1"},
    )
    replaced = headers["X-Request-Id"]
    assert replaced != "bad id/../x#1" and replaced.isalnum()
    seen = [
        r["headers"].get("x-request-id", r["headers"].get("X-Request-Id"))
        for r in standin_session.requests()
    ]
    assert seen == [good, replaced]
    sidecar.wait_for_records([good, replaced])


def test_hop_by_hop_headers_not_forwarded(standin_session, sidecar) -> None:
    standin_session.reset()
    port = int(sidecar.url.rsplit(":", 1)[1])
    body = orjson.dumps(CHAT)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n"
        "Keep-Alive: timeout=9\r\nTE: trailers\r\nUpgrade: foo\r\nX-End-To-End: kept\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items())
        + "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    received = {k.lower() for k in standin_session.requests()[-1]["headers"]}
    assert "x-end-to-end" in received
    assert not received & {"x-hop", "keep-alive", "te", "upgrade"}


async def test_health_reflects_upstream(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url)
    async with aiohttp.ClientSession() as session, session.get(f"{sidecar.url}/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    down = start_sidecar(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as session, session.get(f"{down.url}/health") as response:
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "unhealthy" and body["problems"][0].startswith("vllm:")


async def test_per_request_layout_with_batch_size_one(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, AUDIT_BATCH_MAX_RECORDS="1")
    ids = [rid(), rid()]
    for request_id in ids:
        await post(
            f"{sidecar.url}/v1/chat/completions",
            CHAT,
            {**AUDIT_HEADERS, "x-request-id": request_id},
        )
    audit = sidecar.wait_for_records(ids)
    for key, record in zip(
        sorted(audit.keys), sorted(audit.records, key=lambda r: r["requestId"]), strict=True
    ):
        date = record["timestamp"][:10].replace("-", "/")
        # <requestId>.<batch id>-<index>.json: a client's x-request-id never names a key alone.
        assert key.startswith(f"logs/{date}/{record['requestId']}.") and key.endswith(".json")


async def test_batches_are_gzip_ndjson_under_the_date(standin_session, sidecar) -> None:
    ids = [rid() for _ in range(5)]
    await asyncio.gather(
        *(
            post(f"{sidecar.url}/v1/chat/completions", CHAT, {**AUDIT_HEADERS, "x-request-id": i})
            for i in ids
        )
    )
    audit = sidecar.wait_for_records(ids)
    assert all(k.startswith("logs/") and k.endswith(".ndjson.gz") for k in audit.keys)
    assert len(audit.keys) < len(ids)  # batched, not one object per request
    assert sorted(audit.distinct_ids()) == sorted(ids)
    assert len(audit.records) == len(ids)


async def test_gzip_response_passes_through_untouched(standin_session, sidecar) -> None:
    request_id = rid()
    direct = await post(
        f"{standin_session.url}/v1/chat/completions",
        CHAT,
        {
            "x-standin-scenario": "gzip",
            "accept-encoding": "gzip",
            "x-request-id": request_id,
            "x-standin-created": "1700000000",
        },
    )
    status, headers, body = await post(
        f"{sidecar.url}/v1/chat/completions",
        CHAT,
        {
            **AUDIT_HEADERS,
            "x-standin-scenario": "gzip",
            "accept-encoding": "gzip",
            "x-request-id": request_id,
            "x-standin-created": "1700000000",
        },
    )
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert body == direct[2]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["response"]["body"]["choices"][0]["message"]["content"]
    assert record["response"]["bytes"] == len(body)


async def test_midstream_error_event_recorded(standin_session, sidecar) -> None:
    request_id = rid()
    status, _, body = await post(
        f"{sidecar.url}/v1/chat/completions",
        {**CHAT, "stream": True},
        {**AUDIT_HEADERS, "x-request-id": request_id, "x-standin-scenario": "error_midstream"},
    )
    assert status == 200 and b'"error"' in body
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "upstream_error"
    assert record["response"]["streamError"]["message"]
    assert record["error"]["type"] == "stream_error"


async def test_keepalive_comments_pass_and_are_ignored(standin_session, sidecar) -> None:
    request_id = rid()
    _, _, body = await post(
        f"{sidecar.url}/v1/chat/completions",
        {**CHAT, "stream": True, "max_tokens": 4},
        {**AUDIT_HEADERS, "x-request-id": request_id, "x-standin-scenario": "keepalive_comments"},
    )
    assert b": keep-alive" in body
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "completed"
    assert record["response"]["choices"][0]["content"]


async def test_malformed_json_forwarded_and_recorded_as_text(standin_session, sidecar) -> None:
    request_id = rid()
    status, _, body = await post(
        f"{sidecar.url}/v1/chat/completions",
        b'{"model": "m", broken',
        {**AUDIT_HEADERS, "x-request-id": request_id},
    )
    assert status == 400  # vLLM's own verdict, passed through
    assert "error" in orjson.loads(body)
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["request"]["body"] == '{"model": "m", broken'
    assert record["statusCode"] == 400 and record["outcome"] == "completed"


async def test_pooled_connections_survive_vllm_idle_close(standin_session, sidecar) -> None:
    """vLLM closes idle keep-alive connections after 5 s; the next request must not fail."""
    for pause in (0.0, 5.5):
        await asyncio.sleep(pause)
        status, _, _ = await post(f"{sidecar.url}/v1/chat/completions", CHAT, AUDIT_HEADERS)
        assert status == 200


async def test_long_body_recorded_truncated_with_full_hash(standin_session, start_sidecar) -> None:
    import hashlib

    sidecar = start_sidecar(standin_session.url, MAX_RECORDED_BODY_BYTES="300")
    request_id = rid()
    body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "z" * 2000}]})
    await post(
        f"{sidecar.url}/v1/chat/completions", body, {**AUDIT_HEADERS, "x-request-id": request_id}
    )
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["request"]["truncated"] is True
    assert record["request"]["bytes"] == len(body)
    assert record["request"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["request"]["body"] == body[:300].decode()


async def test_cors_preflight_needs_no_audit_headers(standin_session, sidecar) -> None:
    standin_session.reset()
    request_id = rid()
    headers = {
        "origin": "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-llm-user",
        "x-request-id": request_id,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.options(f"{sidecar.url}/v1/chat/completions", headers=headers) as response,
    ):
        assert response.status != 400
    assert [r["method"] for r in standin_session.requests()] == ["OPTIONS"]
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["method"] == "OPTIONS" and record["outcome"] == "completed"


def test_expect_100_continue_like_curl_sends_for_large_bodies(standin_session, sidecar) -> None:
    standin_session.reset()
    port = int(sidecar.url.rsplit(":", 1)[1])
    body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "long " * 400}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in AUDIT_HEADERS.items())
        + "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert "expect" not in {k.lower() for k in standin_session.requests()[-1]["headers"]}


def _raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    """A request on a plain socket with a small receive buffer, so the sender feels backpressure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    sock.close()
    return b"".join(parts)


async def test_a_stalled_reader_gets_the_whole_stream_and_is_not_an_upstream_timeout(
    standin_session, start_sidecar
) -> None:
    """A client that stops reading makes the sidecar pause reading from vLLM (bounded
    buffers), and that pause is not vLLM's silence: a stall longer than the read
    timeout still ends in the complete, byte-identical stream and a completed record."""
    sidecar = start_sidecar(standin_session.url, UPSTREAM_READ_TIMEOUT_S="1")
    body = orjson.dumps({**CHAT, "stream": True, "max_tokens": 6000})
    pace = {"x-standin-itl-ms": "0", "x-standin-ttft-ms": "0", "x-standin-tokens": "6000"}
    pace["x-standin-created"] = "1700000000"
    request_id = rid()
    headers = {**pace, "content-type": "application/json", "x-request-id": request_id}
    direct = await asyncio.to_thread(
        lambda: _read_all(
            _raw_post(_port(standin_session.url), "/v1/chat/completions", body, headers)
        )
    )
    sock = _raw_post(_port(sidecar.url), "/v1/chat/completions", body, {**AUDIT_HEADERS, **headers})
    await asyncio.sleep(2.5)  # the client reads nothing for longer than the read timeout
    proxied = await asyncio.to_thread(_read_all, sock)

    def events(raw: bytes) -> bytes:  # the SSE payload, chunk framing removed
        _, _, rest = raw.partition(b"\r\n\r\n")
        out, pos = [], 0
        while True:
            eol = rest.index(b"\r\n", pos)
            size = int(rest[pos:eol], 16)
            if size == 0:
                return b"".join(out)
            out.append(rest[eol + 2 : eol + 2 + size])
            pos = eol + 4 + size

    assert proxied.startswith(b"HTTP/1.1 200")
    assert len(direct) > 1_000_000, "the answer must be far larger than the socket buffers"
    assert events(proxied) == events(direct)
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "completed", record["error"]
    assert record["usage"]["completionTokens"] == 6000
