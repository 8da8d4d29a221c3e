"""Hostile input against the real sidecar process: every request one faithful record, no leak.

Each test reproduces one observation of issue #10 (the wave-1 attack report)
against the sidecar process, the vLLM stand-in and moto's S3 on loopback, and
checks what the client got, what vLLM received and what the record says.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import time
import uuid
from typing import Any

import orjson
import pytest

from tests.hostile.client import MODEL, Reply, read_reply
from tests.sidecar_fixture import AUDIT_HEADERS

pytestmark = pytest.mark.timeout(120)


def rid() -> str:
    return f"bad-{uuid.uuid4().hex[:16]}"


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        **extra,
    }


async def send(
    url: str,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    raw_headers: list[bytes] = (),
) -> Reply:
    """One request over a fresh connection, headers exactly as given (repeats included)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {path} HTTP/1.1".encode(), f"Host: {host}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in (headers or [])]
    lines += list(raw_headers)
    lines += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    try:
        return await read_reply(reader)
    finally:
        writer.close()


def audit(request_id: str, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    return [
        ("content-type", "application/json"),
        ("x-request-id", request_id),
        *AUDIT_HEADERS.items(),
        *(extra or {}).items(),
    ]


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def seen_by_vllm(standin: Any, request_id: str) -> list[dict[str, Any]]:
    """The stand-in's journal entries of this request (what vLLM received)."""
    return [r for r in standin.requests() if lower(r["headers"]).get("x-request-id") == request_id]


def one_record(sidecar: Any, request_id: str) -> dict[str, Any]:
    [record] = [
        r for r in sidecar.wait_for_records([request_id]).records if r["requestId"] == request_id
    ]
    return record


# --- 2: a record for every body, however deep -----------------------------------------------


@pytest.mark.parametrize("depth", [254, 255, 600, 1023, 5000])
async def test_deeply_nested_bodies_still_get_a_record(sidecar, depth: int) -> None:
    request_id = rid()
    body = (
        orjson.dumps(chat(stream=True))[:-1] + b',"metadata":' + b"[" * depth + b"]" * depth + b"}"
    )
    reply = await send(sidecar.url, "/v1/chat/completions", body, audit(request_id))
    record = one_record(sidecar, request_id)
    assert record["statusCode"] == reply.status
    assert record["request"]["sha256"] == hashlib.sha256(body).hexdigest()
    if reply.status == 200:  # vLLM streamed it: the record has the answer and its end
        assert reply.body.endswith(b"data: [DONE]\n\n")
        assert record["outcome"] == "completed" and record["response"]["choices"]


async def test_a_record_that_cannot_be_encoded_becomes_a_minimal_record(sidecar) -> None:
    """A path aiohttp decodes to a lone surrogate cannot be UTF-8 encoded by orjson."""
    request_id = rid()
    reply = await send(sidecar.url, "/v1/chat/%ED%A0%80", b"{}", audit(request_id))
    assert reply.status == 404
    record = one_record(sidecar, request_id)
    assert record["statusCode"] == 404
    assert record["outcome"] in ("rejected", "sidecar_error")


# --- 3 and 11: Content-Encoding forwarded as sent, decoded for the record ----------------


async def test_gzip_request_bodies_are_forwarded_as_encoded_and_recorded_decoded(
    sidecar, standin_session
) -> None:
    request_id = rid()
    plain = orjson.dumps(chat())
    body = gzip.compress(plain)
    reply = await send(
        sidecar.url, "/v1/chat/completions", body, audit(request_id, {"content-encoding": "gzip"})
    )
    [seen] = seen_by_vllm(standin_session, request_id)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()  # the client's bytes
    assert lower(seen["headers"]).get("content-encoding") == "gzip"
    record = one_record(sidecar, request_id)
    assert record["statusCode"] == reply.status  # what vLLM answered, the client got
    assert record["request"]["body"] == orjson.loads(plain)
    assert record["request"]["contentEncoding"] == "gzip" and record["request"]["decoded"]


async def test_a_gzip_bomb_is_refused_and_recorded(sidecar, standin_session) -> None:
    request_id = rid()
    bomb = gzip.compress(b"{" + b" " * (40 * 1024 * 1024) + b"}", compresslevel=9)
    assert len(bomb) < 100_000
    reply = await send(
        sidecar.url, "/v1/chat/completions", bomb, audit(request_id, {"content-encoding": "gzip"})
    )
    assert reply.status == 413
    assert orjson.loads(reply.body)["error"]["code"] == "request_too_large"
    record = one_record(sidecar, request_id)
    assert (record["statusCode"], record["outcome"]) == (413, "rejected")


async def test_invalid_gzip_is_recorded_with_the_status_the_client_got(sidecar) -> None:
    request_id = rid()
    reply = await send(
        sidecar.url,
        "/v1/chat/completions",
        b"\x1f\x8bnot gzip at all",
        audit(request_id, {"content-encoding": "gzip"}),
    )
    record = one_record(sidecar, request_id)
    assert reply.status != 0 and record["statusCode"] == reply.status
    assert record["request"]["decoded"] is False


async def test_headers_named_in_connection_are_not_in_the_record(sidecar, standin_session) -> None:
    request_id = rid()
    await send(
        sidecar.url,
        "/v1/chat/completions",
        orjson.dumps(chat()),
        [*audit(request_id), ("x-hop", "1")],
        raw_headers=[b"Connection: x-hop"],
    )
    [seen] = seen_by_vllm(standin_session, request_id)
    assert "x-hop" not in lower(seen["headers"])
    record = one_record(sidecar, request_id)
    assert "x-hop" not in record["request"]["headers"]  # vLLM never received it


# --- 6: identity headers -----------------------------------------------------------------


async def test_a_repeated_identity_header_is_refused_and_audited(sidecar, standin_session) -> None:
    request_id = rid()
    headers = [*audit(request_id), ("x-llm-user", "bob")]  # AUDIT_HEADERS has one already
    reply = await send(sidecar.url, "/v1/chat/completions", orjson.dumps(chat()), headers)
    assert reply.status == 400
    error = orjson.loads(reply.body)["error"]
    assert (error["code"], error["param"]) == ("repeated_audit_header", "x-llm-user")
    record = one_record(sidecar, request_id)
    assert (record["statusCode"], record["outcome"]) == (400, "rejected")
    assert seen_by_vllm(standin_session, request_id) == []


async def test_identity_headers_are_recorded_as_utf8(sidecar) -> None:
    request_id = rid()
    headers = [(k, v) for k, v in audit(request_id) if k != "x-llm-user"]
    await send(
        sidecar.url,
        "/v1/chat/completions",
        orjson.dumps(chat()),
        headers,
        raw_headers=["x-llm-user: ålice".encode()],
    )
    record = one_record(sidecar, request_id)
    assert record["userId"] == "ålice"
    assert record["request"]["headers"]["x-llm-user"] == "ålice"


# --- 8: deadlines ------------------------------------------------------------------------


async def test_a_trickled_body_gets_408_and_a_record(standin_session, start_sidecar) -> None:
    sidecar = start_sidecar(standin_session.url, REQUEST_BODY_TIMEOUT_S="1")
    request_id = rid()
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in audit(request_id))
    start = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 100\r\n\r\n"
    writer.write(start.encode())
    for _ in range(3):  # a byte every 0.6 s: never silent for long, never done
        writer.write(b" ")
        await asyncio.sleep(0.6)
    reply = await read_reply(reader)
    writer.close()
    assert reply.status == 408
    record = one_record(sidecar, request_id)
    assert (record["statusCode"], record["outcome"]) == (408, "rejected")


async def test_waiting_for_a_free_upstream_slot_ends_in_503_and_a_record(
    start_standin, start_sidecar
) -> None:
    standin = start_standin(ttft_ms=3000, itl_ms=10, tokens=4)
    sidecar = start_sidecar(
        standin.url, UPSTREAM_MAX_CONNECTIONS="1", UPSTREAM_QUEUE_TIMEOUT_S="0.5"
    )
    first, second = rid(), rid()
    slow = asyncio.create_task(
        send(sidecar.url, "/v1/chat/completions", orjson.dumps(chat()), audit(first))
    )
    await asyncio.sleep(0.3)
    reply = await send(sidecar.url, "/v1/chat/completions", orjson.dumps(chat()), audit(second))
    assert reply.status == 503
    assert orjson.loads(reply.body)["error"]["code"] == "upstream_busy"
    assert (await slow).status == 200
    record = one_record(sidecar, second)
    assert (record["statusCode"], record["outcome"]) == (503, "rejected")


async def test_a_client_that_stops_reading_is_disconnected_and_vllm_aborts(
    start_standin, start_sidecar
) -> None:
    # An answer far larger than every socket buffer between the two, produced fast.
    standin = start_standin(ttft_ms=1, itl_ms=0, tokens=200_000, max_model_len=400_000)
    sidecar = start_sidecar(standin.url, CLIENT_WRITE_STALL_S="1")
    request_id = rid()
    host, port = sidecar.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = orjson.dumps(chat(stream=True, max_tokens=200_000))
    head = "".join(f"{k}: {v}\r\n" for k, v in audit(request_id))
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    started = time.monotonic()
    record = None
    while time.monotonic() - started < 30 and record is None:  # never read a byte
        await asyncio.sleep(0.5)
        records = [r for r in sidecar.audit().records if r["requestId"] == request_id]
        record = records[0] if records else None
    sock.close()
    assert record is not None, "the stalled client was never cut off"
    assert record["outcome"] == "client_disconnected"
    assert "read nothing" in record["error"]["message"]


# --- 9: redaction by pattern, in records and logs ----------------------------------------


async def test_secret_looking_headers_and_query_parameters_are_redacted(sidecar) -> None:
    request_id = rid()
    secrets = {"api_key": "sk-h1", "x-auth-token": "tok-h2", "openai-api-key": "sk-h3"}
    await send(
        sidecar.url,
        "/v1/chat/completions?api_key=sk-h4&x=1",
        orjson.dumps(chat()),
        [*audit(request_id), *secrets.items()],
    )
    record = one_record(sidecar, request_id)
    text = orjson.dumps(record).decode()
    for value in ("sk-h1", "tok-h2", "sk-h3", "sk-h4"):
        assert value not in text
    assert "x=1" in record["query"]


async def test_a_malformed_request_never_puts_its_authorization_in_the_logs(sidecar) -> None:
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer sk-leak-me\r\nBad Header Line\x01: v\r\n\r\n"
    )
    await reader.read()
    writer.close()
    await asyncio.sleep(0.5)
    assert not any("sk-leak-me" in line for line in sidecar.log_lines())


# --- 10: S3 keys never from client input alone --------------------------------------------


async def test_two_clients_with_the_same_request_id_keep_both_records(
    standin_session, start_sidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, AUDIT_BATCH_MAX_RECORDS="1")
    shared = rid()
    for user in ("alice", "mallory"):
        headers = [(k, v) for k, v in audit(shared) if k != "x-llm-user"] + [("x-llm-user", user)]
        assert (
            await send(sidecar.url, "/v1/chat/completions", orjson.dumps(chat()), headers)
        ).status == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        users = sorted(r["userId"] for r in sidecar.audit().records if r["requestId"] == shared)
        if len(users) == 2:
            break
        await asyncio.sleep(0.3)
    assert users == ["alice", "mallory"]
