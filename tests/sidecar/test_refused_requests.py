"""Refused requests and who asked, against the real sidecar process (loopback; red team rt8).

A refused request (a path off the allowlist, an admin route, a target that is not a path)
is answered 404 in the OpenAI shape whatever its identity and edge headers say, has one
record naming the caller as far as its headers can (`outcome: rejected`), reaches nothing
upstream, keeps no secret, and leaves the connection's later requests to themselves.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.hostile.client import MODEL, Reply, read_replies

pytestmark = pytest.mark.timeout(120)

CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
).encode()
SECRETS = (
    b"Authorization: Bearer rt8-secret-authorization\r\n"
    b"x-api-key: rt8-secret-api-key\r\n"
    b"Cookie: session=rt8-secret-cookie\r\n"
    b"Proxy-Authorization: Basic rt8-secret-proxy\r\n"
)


def rid() -> str:
    return f"rt8-{uuid.uuid4().hex[:16]}"


def identity(user: str) -> bytes:
    return (
        f"x-llm-source: src-{user}\r\nx-llm-user: {user}\r\nx-llm-request-type: chat\r\n".encode()
    )


def request(
    method: bytes,
    target: bytes,
    request_id: str,
    headers: bytes = b"",
    body: bytes | None = b"{}",
    *,
    close: bool = False,
) -> bytes:
    """One HTTP/1.1 request, byte for byte: `body=None` sends no Content-Length and no body."""
    head = b"%s %s HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\n" % (
        method,
        target,
        request_id.encode(),
    )
    head += headers
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + (body or b"")


async def exchange(url: str, data: bytes, replies: int = 1) -> list[Reply]:
    """Write `data` on one connection and read `replies` answers (1xx ones included)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        async with asyncio.timeout(30):
            return await read_replies(reader, replies)
    finally:
        writer.close()


def assert_openai_404(reply: Reply) -> None:
    assert reply.status == 404, (reply.status, reply.body)
    assert reply.header("content-type") == "application/json"
    error = json.loads(reply.body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")


def the_record(sidecar: Any, request_id: str) -> dict[str, Any]:
    records = sidecar.wait_for_records([request_id]).records
    [record] = [r for r in records if r["requestId"] == request_id]
    return record


def caller(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (record["source"], record["userId"], record["requestType"], record["projectId"])


UNKNOWN = ("unknown", "unknown", "unknown", "unknown")
HOSTILE_IDENTITY = {
    "repeated": (identity("a") + b"x-llm-user: b\r\n", UNKNOWN),
    "repeated-case": (identity("a") + b"X-LLM-USER: b\r\n", UNKNOWN),
    "empty": (
        b"x-llm-source:\r\nx-llm-user: \r\nx-llm-request-type: chat\r\n",
        ("unknown", "unknown", "chat", "unknown"),
    ),
    "whitespace-only": (
        b"x-llm-source:  \t \r\nx-llm-user: u\r\n",
        ("unknown", "u", "unknown", "unknown"),
    ),
    "too-long": (identity("a") + b"x-llm-project: " + b"p" * 257 + b"\r\n", UNKNOWN),
    "exactly-256": (
        b"x-llm-source: s\r\nx-llm-user: " + b"u" * 256 + b"\r\n",
        ("s", "u" * 256, "unknown", "s"),
    ),
    "near-aiohttp-field-limit": (b"x-llm-user: " + b"u" * 8100 + b"\r\n", UNKNOWN),
    "invalid-utf8": (b"x-llm-user: \xff\xfe\r\nx-llm-source: s\r\n", UNKNOWN),
    "latin1-not-utf8": (b"x-llm-user: jos\xe9\r\nx-llm-source: s\r\n", UNKNOWN),
    "tab-inside": (b"x-llm-user: a\tb\r\nx-llm-source: s\r\n", UNKNOWN),
    "mixed-case-names": (
        b"X-LLM-Source: S\r\nX-Llm-User: Mixed\r\nx-LLM-request-TYPE: chat\r\n",
        ("S", "Mixed", "chat", "S"),
    ),
    "utf8": (
        "x-llm-user: jos\u00e9\r\nx-llm-source: s\r\n".encode(),
        ("s", "jos\u00e9", "unknown", "s"),
    ),
    "many-identity-like": (
        b"".join(b"x-llm-user-%d: v\r\n" % i for i in range(90)) + identity("m"),
        ("src-m", "m", "chat", "src-m"),
    ),
}


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


async def test_hostile_identity_headers_on_a_refused_path_never_change_the_404(
    standin_session, sidecar
) -> None:
    """Every spelling of the identity headers aiohttp lets through: the 404 stays, the record
    names the caller when the headers are readable and no one (`unknown`) when not."""
    standin_session.reset()
    sent: dict[str, str] = {}
    for name, (headers, _) in HOSTILE_IDENTITY.items():
        sent[name] = rid()
        [reply] = await exchange(
            sidecar.url, request(b"POST", b"/sleep", sent[name], headers, close=True)
        )
        assert_openai_404(reply)
    records = sidecar.wait_for_records(list(sent.values())).records
    for name, (_, expected) in HOSTILE_IDENTITY.items():
        [record] = [r for r in records if r["requestId"] == sent[name]]
        assert (record["outcome"], record["statusCode"]) == ("rejected", 404), name
        assert caller(record) == expected, name
    assert records and all(r["apiKeyId"] is None for r in records)
    assert standin_session.requests() == []


REFUSED_TARGETS = [
    (b"POST", b"/v1/load_lora_adapter"),
    (b"POST", b"/sleep%0A"),
    (b"POST", b"/v1/%2e%2e/sleep"),
    (b"GET", b"http://h/v1/models"),
    (b"OPTIONS", b"*"),
    (b"CONNECT", b"vllm:8000"),
]


@pytest.mark.parametrize(("method", "target"), REFUSED_TARGETS, ids=lambda v: v.decode())
async def test_forged_edge_headers_are_not_taken_without_trust(
    standin_session, sidecar, method: bytes, target: bytes
) -> None:
    """Without TRUST_EDGE_HEADERS a client cannot name the API key of its refused request."""
    standin_session.reset()
    request_id = rid()
    forged = b"x-edge-api-key-id: forged-key\r\nx-edge-request-id: forged-edge\r\n"
    [reply] = await exchange(
        sidecar.url, request(method, target, request_id, identity("eve") + forged, close=True)
    )
    assert_openai_404(reply)
    record = the_record(sidecar, request_id)
    assert record["outcome"] == "rejected"
    assert caller(record) == ("src-eve", "eve", "chat", "src-eve")
    assert (record["apiKeyId"], record["edgeRequestId"]) == (None, None)
    assert standin_session.requests() == []


async def test_secrets_of_a_refused_request_stay_out_of_the_record_and_the_log(
    standin_session, sidecar
) -> None:
    standin_session.reset()
    request_id = rid()
    [reply] = await exchange(
        sidecar.url,
        request(
            b"POST",
            b"/v1/load_lora_adapter?api_key=rt8-secret-query",
            request_id,
            identity("mallory") + SECRETS,
            close=True,
        ),
    )
    assert_openai_404(reply)
    record = the_record(sidecar, request_id)
    assert caller(record) == ("src-mallory", "mallory", "chat", "src-mallory")
    headers = record["request"]["headers"]
    for name in ("authorization", "x-api-key", "cookie", "proxy-authorization"):
        assert headers[name] == "[REDACTED]", name
    assert "rt8-secret" not in json.dumps(record)
    assert not [line for line in sidecar.log_lines() if "rt8-secret" in line]


async def test_a_connect_target_s_credentials_stay_out_of_the_record_the_answer_and_the_log(
    standin_session, sidecar
) -> None:
    """Authority-form carries no userinfo (RFC 9112 §3.2.3), but aiohttp accepts one: the
    record kept the target as sent, so `CONNECT user:password@host:port` put the password in
    the record's path and error, in the 404's message and in the log line."""
    standin_session.reset()
    request_id = rid()
    [reply] = await exchange(
        sidecar.url,
        request(b"CONNECT", b"user:rt8-secret-userinfo@vllm:8000", request_id, identity("eve")),
    )
    assert_openai_404(reply)
    assert b"rt8-secret" not in reply.body
    record = the_record(sidecar, request_id)
    assert record["outcome"] == "rejected" and record["method"] == "CONNECT"
    assert record["path"] == "[REDACTED]@vllm:8000"
    assert caller(record) == ("src-eve", "eve", "chat", "src-eve")
    assert "rt8-secret" not in json.dumps(record)
    assert not [line for line in sidecar.log_lines() if "rt8-secret" in line]
    assert standin_session.requests() == []


@pytest.mark.parametrize("target", [b"/sleep", b"/v1/load_lora_adapter", b"/v1/nope"])
async def test_an_unknown_expectation_on_a_refused_path_is_still_an_audited_404(
    standin_session, sidecar, target: bytes
) -> None:
    """aiohttp answered any Expect other than 100-continue itself, before the route's handler:
    a plain-text 417 and no record, so an admin-route probe carrying `Expect: x` left no
    trace. vLLM's server ignores such an expectation (RFC 9110 §10.1.1 allows it)."""
    standin_session.reset()
    request_id = rid()
    [reply] = await exchange(
        sidecar.url,
        request(b"POST", target, request_id, identity("eve") + b"Expect: x-probe\r\n", close=True),
    )
    assert_openai_404(reply)
    record = the_record(sidecar, request_id)
    assert (record["outcome"], record["statusCode"]) == ("rejected", 404)
    assert caller(record) == ("src-eve", "eve", "chat", "src-eve")
    assert standin_session.requests() == []


async def test_an_unknown_expectation_on_an_allowed_path_is_forwarded_and_recorded(
    standin_session, sidecar
) -> None:
    standin_session.reset()
    request_id = rid()
    headers = identity("bob") + b"content-type: application/json\r\nExpect: x-probe\r\n"
    [reply] = await exchange(
        sidecar.url,
        request(b"POST", b"/v1/chat/completions", request_id, headers, CHAT, close=True),
    )
    assert reply.status == 200, reply.body
    record = the_record(sidecar, request_id)
    assert (record["outcome"], record["userId"]) == ("completed", "bob")
    [seen] = standin_session.requests()
    assert "expect" not in {name.lower() for name, _ in seen["header_list"]}


@pytest.mark.parametrize("target", [b"/sleep", b"/v1/chat/completions"])
async def test_100_continue_is_still_answered(standin_session, sidecar, target: bytes) -> None:
    """The expectation aiohttp meets is met as before, on a refused path and an allowed one."""
    standin_session.reset()
    request_id = rid()
    headers = identity("eve") + b"content-type: application/json\r\nExpect: 100-continue\r\n"
    interim, reply = await exchange(
        sidecar.url, request(b"POST", target, request_id, headers, CHAT, close=True), replies=2
    )
    assert interim.status == 100
    record = the_record(sidecar, request_id)
    assert caller(record) == ("src-eve", "eve", "chat", "src-eve")
    if target == b"/sleep":
        assert_openai_404(reply)
        assert standin_session.requests() == []
    else:
        assert reply.status == 200 and record["outcome"] == "completed"
        assert [e["path"] for e in standin_session.requests()] == ["/v1/chat/completions"]


async def test_pipelined_refused_and_allowed_requests_each_record_their_own_caller(
    standin_session, start_sidecar
) -> None:
    """One keep-alive connection: refused, allowed, refused without headers, refused with
    unreadable ones (chunked body), an allowed one missing headers, OPTIONS *, then a CONNECT
    (which closes the connection). No record takes another request's caller or API key."""
    trusting = start_sidecar(standin_session.url, TRUST_EDGE_HEADERS="true")
    standin_session.reset()
    ids = [rid() for _ in range(7)]
    json_type = b"content-type: application/json\r\n"
    data = b"".join(
        [
            request(b"POST", b"/sleep", ids[0], identity("a") + b"x-edge-api-key-id: key-a\r\n"),
            request(b"POST", b"/v1/chat/completions", ids[1], identity("b") + json_type, CHAT),
            request(b"POST", b"/v1/load_lora_adapter", ids[2]),
            request(
                b"POST",
                b"/pause",
                ids[3],
                identity("d") + b"x-llm-user: d2\r\nTransfer-Encoding: chunked\r\n",
                None,
            )
            + b"2\r\n{}\r\n0\r\n\r\n",
            request(b"GET", b"/v1/models", ids[4], b"x-llm-user: e\r\n", None),
            request(b"OPTIONS", b"*", ids[5], identity("f"), None),
            request(b"CONNECT", b"vllm:8000", ids[6], identity("g"), None),
        ]
    )
    replies = await exchange(trusting.url, data, replies=7)
    assert [r.status for r in replies] == [404, 200, 404, 404, 400, 404, 404]
    records = trusting.wait_for_records(ids).by_id()
    got = [(records[i]["userId"], records[i]["apiKeyId"], records[i]["outcome"]) for i in ids]
    assert got == [
        ("a", "key-a", "rejected"),
        ("b", None, "completed"),
        ("unknown", None, "rejected"),
        ("unknown", None, "rejected"),
        ("unknown", None, "rejected"),
        ("f", None, "rejected"),
        ("g", None, "rejected"),
    ]
    assert [(e["path"], e["headers"].get("x-llm-user")) for e in standin_session.requests()] == [
        ("/v1/chat/completions", "b")
    ]


@pytest.mark.parametrize(
    "cut",
    ["after-head", "mid-body", "mid-chunked-body"],
)
async def test_a_client_gone_during_a_refused_request_leaves_one_record(
    standin_session, sidecar, cut: str
) -> None:
    """The 404 does not wait for the body: a client that leaves after the head or halfway
    through the body still has its one record, and the sidecar serves the next client."""
    standin_session.reset()
    request_id = rid()
    head = request(b"POST", b"/v1/load_lora_adapter", request_id, identity("eve"), None)
    data = {
        "after-head": head[:-2] + b"Content-Length: 100\r\n\r\n",
        "mid-body": head[:-2] + b'Content-Length: 100\r\n\r\n{"lora_name":',
        "mid-chunked-body": head[:-2] + b'Transfer-Encoding: chunked\r\n\r\n20\r\n{"lora',
    }[cut]
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    async with asyncio.timeout(30):
        [reply] = await read_replies(reader, 1)
    assert_openai_404(reply)
    writer.transport.abort()
    record = the_record(sidecar, request_id)
    assert (record["outcome"], record["statusCode"]) == ("rejected", 404)
    assert caller(record) == ("src-eve", "eve", "chat", "src-eve")
    after = rid()
    [reply] = await exchange(sidecar.url, request(b"GET", b"/sleep", after, close=True))
    assert_openai_404(reply)
    assert the_record(sidecar, after)["outcome"] == "rejected"
    assert standin_session.requests() == []
    assert not [line for line in sidecar.log_lines() if '"level":"error"' in line]
