"""Upgrade requests, Expect handling and identity characters against the real sidecar process
(loopback; red team rt9).

A request asking to upgrade is answered once, in HTTP/1.1, and its connection closed: nothing
pipelined after it is answered, unaudited or otherwise, and nothing upgrade-related reaches
vLLM. `Expect: 100-continue` is met with at most one interim answer, before one final answer
with its record, also when the client is already gone. Identity values holding controls or
bidirectional embeddings, overrides or isolates are refused (400, or `unknown` on a refused
path); marks and joiners are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import uuid
from typing import Any

import pytest

from sidecar_audit.headers import IdentityProblem, read_identity
from tests.hostile.client import MODEL, Reply, read_replies, replies_of

pytestmark = pytest.mark.timeout(180)

CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
).encode()
STREAM = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
UPGRADES = {
    "websocket": b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    "websocket-without-connection": b"Upgrade: websocket\r\n",
    "h2c": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "tcp": b"Connection: upgrade\r\nUpgrade: tcp\r\n",
    "empty": b"Connection: upgrade\r\nUpgrade:\r\n",
    "repeated": b"Connection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n",
}
# Names that say "upgrade" on the way in; none may reach vLLM.
UPGRADE_FIELDS = {"upgrade", "connection", "http2-settings"}
LIMIT = 4096  # MAX_REQUEST_BODY_BYTES of the sidecar under test


def rid() -> str:
    return f"rt9-{uuid.uuid4().hex[:16]}"


def identity(user: str = "u") -> bytes:
    return f"x-llm-source: s\r\nx-llm-user: {user}\r\nx-llm-request-type: chat\r\n".encode()


def request(
    method: bytes,
    target: bytes,
    request_id: str,
    headers: bytes = b"",
    body: bytes | None = None,
    *,
    chunked: bool = False,
    version: bytes = b"1.1",
) -> bytes:
    """One request, byte for byte; a body goes with Content-Length, or chunked in one chunk."""
    head = b"%s %s HTTP/%s\r\nHost: x\r\nx-request-id: %s\r\n" % (
        method,
        target,
        version,
        request_id.encode(),
    )
    head += headers
    if body is not None and chunked:
        head += b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


async def until_closed(url: str, data: bytes, *, then: bytes = b"") -> bytes:
    """Write `data` on one connection, and `then` once the first answer's head is in;
    everything the sidecar sends until it closes the connection (fails if it never does)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            while chunk := await reader.read(65536):
                received += chunk
                if then and b"\r\n\r\n" in received:
                    writer.write(then)
                    then = b""
    except ConnectionResetError:
        pass  # bytes we sent after the answer and the sidecar never read: a reset, not a hang
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


async def answers(url: str, data: bytes, count: int) -> list[Reply]:
    """Write `data` on one connection and read `count` answers (1xx ones included)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            return await read_replies(reader, count)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def records(sidecar: Any, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The record of each request id (exactly one each), waiting for all of them."""
    found = sidecar.wait_for_records(request_ids).records
    by_id: dict[str, dict[str, Any]] = {}
    for record in found:
        assert record["requestId"] not in by_id, f"two records for {record['requestId']}"
        by_id[record["requestId"]] = record
    return by_id


def seen_ids(standin: Any) -> set[str]:
    return {
        value
        for entry in standin.requests()
        for key, value in entry["header_list"]
        if key.lower() == "x-request-id"
    }


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url, MAX_REQUEST_BODY_BYTES=str(LIMIT))


# --- Expect: 100-continue from a client that is already gone --------------------------------


def _sent_then_reset(url: str, data: bytes) -> None:
    """Send `data`, then reset the connection (SO_LINGER 0): the client is gone at once."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(data)


@pytest.mark.parametrize(
    ("target", "outcomes"),
    [
        (b"/v1/chat/completions", {"client_disconnected", "completed"}),
        (b"/sleep", {"rejected"}),
    ],
)
async def test_a_request_expecting_100_continue_whose_client_left_is_still_recorded(
    standin_session, sidecar, target: bytes, outcomes: set[str]
) -> None:
    """The sidecar's expect handler wrote the 100 to a connection the client had already
    reset: aiohttp's writer raised, the request's handler never ran, and the request left
    no record, only an aiohttp error in the log (the same request without the expectation
    is recorded as `client_disconnected`). An admin-route probe sent so was untraceable.
    A client that is gone needs no 100: the request goes on to its handler and record."""
    sent = []
    for _ in range(10):
        request_id = rid()
        sent.append(request_id)
        headers = identity("eve") + b"content-type: application/json\r\nExpect: 100-continue\r\n"
        _sent_then_reset(sidecar.url, request(b"POST", target, request_id, headers, CHAT))
    found = records(sidecar, sent)
    for request_id in sent:
        record = found[request_id]
        assert record["outcome"] in outcomes, record
        assert (record["userId"], record["path"]) == ("eve", target.decode())
    assert "Cannot write to closing transport" not in sidecar.proc.log()


# --- Upgrade ----------------------------------------------------------------------------------


async def test_an_upgrade_request_to_health_closes_the_connection(standin_session, sidecar) -> None:
    """`/health` is answered by the sidecar itself, not the proxy, and kept the connection
    open after a request asking to upgrade (h2c): aiohttp drops the bytes read with such a
    request, so a request pipelined behind it was never answered, and the client waited
    for the keep-alive timeout. The answer now closes the connection, as the proxy's do."""
    standin_session.reset()
    following = rid()
    data = request(b"GET", b"/health", rid(), UPGRADES["h2c"]) + request(
        b"GET", b"/v1/models", following, identity()
    )
    received = await until_closed(sidecar.url, data)
    [reply] = replies_of(received)
    assert reply.status == 200 and reply.header("connection") == "close", received[:300]
    assert following not in seen_ids(standin_session)


UPGRADE_TARGETS = {
    "GET": (b"GET", b"/v1/models", None, False, 200, "completed"),
    "POST": (b"POST", b"/v1/chat/completions", CHAT, False, 200, "completed"),
    "POST-chunked": (b"POST", b"/v1/chat/completions", CHAT, True, 200, "completed"),
    "stream": (b"POST", b"/v1/chat/completions", STREAM, False, 200, "completed"),
    "refused": (b"POST", b"/sleep", CHAT, False, 404, "rejected"),
    "refused-chunked": (b"POST", b"/sleep", CHAT, True, 404, "rejected"),
}


async def test_every_upgrade_request_is_answered_once_and_its_connection_closed(
    standin_session, sidecar
) -> None:
    """Each way of asking to upgrade, on GET and POST, with a body of known length or
    chunked, on a stream and on a refused path, with a request pipelined behind it in the
    same write: one well-framed answer carrying `Connection: close`, then the end of the
    connection; one record; the pipelined request is never answered, forwarded or recorded;
    vLLM never sees an upgrade header."""
    standin_session.reset()
    asked: dict[str, tuple[str, str, int, str]] = {}
    following: list[str] = []
    for how, fields in UPGRADES.items():
        for what, (method, target, body, chunked, status, outcome) in UPGRADE_TARGETS.items():
            request_id, next_id = rid(), rid()
            headers = identity() + b"content-type: application/json\r\n" + fields
            data = request(method, target, request_id, headers, body, chunked=chunked)
            data += request(b"GET", b"/v1/models", next_id, identity())
            received = await until_closed(sidecar.url, data)
            case = f"{how} {what}"
            [reply] = replies_of(received)  # one answer, well framed, nothing after it
            assert reply.status == status, (case, reply.status, reply.body)
            assert reply.header("connection") == "close", case
            assert reply.header("x-request-id") == request_id, case
            if what == "stream":
                assert reply.body.endswith(b"data: [DONE]\n\n"), case
            asked[request_id] = (case, target.decode(), status, outcome)
            following.append(next_id)
    found = records(sidecar, list(asked))
    for request_id, (case, path, status, outcome) in asked.items():
        record = found[request_id]
        assert (record["path"], record["statusCode"], record["outcome"]) == (
            path,
            status,
            outcome,
        ), case
    assert not set(following) & {r["requestId"] for r in sidecar.audit().records}
    journal = standin_session.requests()
    assert not set(following) & seen_ids(standin_session)
    for entry in journal:
        assert not UPGRADE_FIELDS & {k.lower() for k, _ in entry["header_list"]}, entry


async def test_connection_upgrade_without_an_upgrade_header_keeps_the_connection(
    standin_session, sidecar
) -> None:
    """Only a request naming a protocol asks to upgrade: `Connection: upgrade` alone is a
    hop-by-hop token like any other, so the connection carries the next request as usual."""
    standin_session.reset()
    first, second = rid(), rid()
    headers = identity() + b"Connection: upgrade\r\n"
    data = request(b"GET", b"/v1/models", first, headers) + request(
        b"GET", b"/v1/models", second, identity()
    )
    replies = await answers(sidecar.url, data, 2)
    assert [r.status for r in replies] == [200, 200]
    assert [r.header("x-request-id") for r in replies] == [first, second]
    found = records(sidecar, [first, second])
    assert {found[i]["outcome"] for i in (first, second)} == {"completed"}
    for entry in standin_session.requests():
        assert not UPGRADE_FIELDS & {k.lower() for k, _ in entry["header_list"]}, entry


async def test_an_upgrade_request_on_http_1_0_and_head_is_answered_and_closed(
    standin_session, sidecar
) -> None:
    """HTTP/1.0 (a stream whose body ends with the connection) and HEAD (an answer whose head
    is held for the record): one answer each, then the end of the connection."""
    stream_id, head_id = rid(), rid()
    headers = identity() + b"content-type: application/json\r\n" + UPGRADES["websocket"]
    following = request(b"GET", b"/v1/models", rid(), identity())
    received = await until_closed(
        sidecar.url,
        request(b"POST", b"/v1/chat/completions", stream_id, headers, STREAM, version=b"1.0")
        + following,
    )
    assert received.startswith(b"HTTP/1.0 200 ") and received.count(b"HTTP/1.") == 1
    assert received.endswith(b"data: [DONE]\n\n"), received[-200:]
    received = await until_closed(
        sidecar.url, request(b"HEAD", b"/v1/models", head_id, identity() + UPGRADES["h2c"])
    )
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and rest == b""  # the head alone, once
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    found = records(sidecar, [stream_id, head_id])
    assert [found[i]["outcome"] for i in (stream_id, head_id)] == ["completed", "completed"]


@pytest.mark.parametrize("how", ["h2c", "websocket"])
async def test_bytes_sent_after_an_upgrade_request_s_answer_began_are_never_answered(
    standin_session, sidecar, how: str
) -> None:
    """A client that keeps sending once the stream's head is in (requests, then garbage, as
    a client that believes it upgraded would): the stream is still one complete answer, the
    connection then closes, and nothing sent after it is answered, forwarded or recorded."""
    standin_session.reset()
    request_id, later_id = rid(), rid()
    headers = identity() + b"content-type: application/json\r\n" + UPGRADES[how]
    later = request(b"GET", b"/v1/models", later_id, identity()) * 3
    later += b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00" * 64
    received = await until_closed(
        sidecar.url,
        request(b"POST", b"/v1/chat/completions", request_id, headers, STREAM),
        then=later,
    )
    [reply] = replies_of(received)
    assert reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")
    record = records(sidecar, [request_id])[request_id]
    assert record["outcome"] == "completed"
    assert later_id not in seen_ids(standin_session)
    assert later_id not in {r["requestId"] for r in sidecar.audit().records}


@pytest.mark.parametrize("how", ["h2c", "websocket"])
async def test_a_client_gone_mid_stream_of_an_upgrade_request_leaves_one_record(
    start_standin, start_sidecar, how: str
) -> None:
    slow = start_standin(ttft_ms=10, itl_ms=50, tokens=200)
    sidecar = start_sidecar(slow.url)
    request_id = rid()
    headers = identity() + b"content-type: application/json\r\n" + UPGRADES[how]
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request(b"POST", b"/v1/chat/completions", request_id, headers, STREAM))
    async with asyncio.timeout(20):
        received = b""
        while b"data: " not in received:  # the head and a first event
            chunk = await reader.read(65536)
            assert chunk, received
            received += chunk
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()  # gone before the record is waited for (a blocking wait)
    assert received.startswith(b"HTTP/1.1 200 ")
    record = records(sidecar, [request_id])[request_id]
    assert record["outcome"] == "client_disconnected" and record["statusCode"] == 200
    assert len([r for r in sidecar.audit().records if r["requestId"] == request_id]) == 1


# --- Expect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "interim"),
    [
        (b"Expect: 100-continue\r\n", 1),
        (b"Expect: 100-CONTINUE\r\n", 1),
        (b"Expect:   100-Continue \t \r\n", 1),
        (b"Expect: 100-continue\r\nExpect: 100-continue\r\n", 1),  # once, not twice
        (b"Expect:\r\n", 0),
        (b"Expect: 100-continue;x=1\r\n", 0),  # an expectation not known: ignored
    ],
)
@pytest.mark.parametrize(
    ("target", "status", "outcome"),
    [(b"/v1/chat/completions", 200, "completed"), (b"/sleep", 404, "rejected")],
)
async def test_an_expectation_gets_at_most_one_100_then_one_answer_and_record(
    standin_session,
    sidecar,
    fields: bytes,
    interim: int,
    target: bytes,
    status: int,
    outcome: str,
) -> None:
    request_id, next_id = rid(), rid()
    headers = identity() + b"content-type: application/json\r\n" + fields
    data = request(b"POST", target, request_id, headers, CHAT)
    data += request(b"GET", b"/v1/models", next_id, identity())
    replies = await answers(sidecar.url, data, interim + 2)
    assert [r.status for r in replies] == [100] * interim + [status, 200]
    assert replies[interim].header("x-request-id") == request_id
    found = records(sidecar, [request_id, next_id])
    assert (found[request_id]["outcome"], found[request_id]["statusCode"]) == (outcome, status)
    assert found[next_id]["outcome"] == "completed"


async def test_100_continue_on_http_1_0_and_pipelined_expectations(
    standin_session, sidecar
) -> None:
    """HTTP/1.0 has no interim answers; each of two pipelined requests expecting 100 gets
    its own, just before its own answer."""
    old_id = rid()
    headers = identity() + b"content-type: application/json\r\nExpect: 100-continue\r\n"
    received = await until_closed(
        sidecar.url,
        request(b"POST", b"/v1/chat/completions", old_id, headers, CHAT, version=b"1.0"),
    )
    assert received.startswith(b"HTTP/1.0 200 ") and b" 100 " not in received.split(b"\r\n")[0]
    assert received.count(b"HTTP/1.") == 1
    first, second = rid(), rid()
    data = request(b"POST", b"/v1/chat/completions", first, headers, CHAT)
    data += request(b"POST", b"/sleep", second, headers, CHAT)
    replies = await answers(sidecar.url, data, 4)
    assert [r.status for r in replies] == [100, 200, 100, 404]
    found = records(sidecar, [old_id, first, second])
    assert [found[i]["outcome"] for i in (old_id, first, second)] == [
        "completed",
        "completed",
        "rejected",
    ]


@pytest.mark.parametrize("chunked", [False, True])
async def test_100_continue_with_a_body_over_the_limit_is_one_413_and_the_connection_goes_on(
    standin_session, sidecar, chunked: bool
) -> None:
    """A body larger than MAX_REQUEST_BODY_BYTES after `Expect: 100-continue`: one 413 in the
    OpenAI shape with its record, nothing forwarded, and the body (sent after all) is not
    read as a request: the next request on the connection is answered as itself."""
    standin_session.reset()
    request_id, next_id = rid(), rid()
    big = b'{"pad": "' + b"x" * (2 * LIMIT) + b'"}'
    headers = identity() + b"content-type: application/json\r\nExpect: 100-continue\r\n"
    data = request(b"POST", b"/v1/chat/completions", request_id, headers, big, chunked=chunked)
    data += request(b"GET", b"/v1/models", next_id, identity())
    replies = await answers(sidecar.url, data, 3)
    assert [r.status for r in replies] == [100, 413, 200]
    assert json.loads(replies[1].body)["error"]["type"] == "invalid_request_error"
    assert replies[2].header("x-request-id") == next_id
    found = records(sidecar, [request_id, next_id])
    assert (found[request_id]["outcome"], found[request_id]["statusCode"]) == ("rejected", 413)
    assert [e["path"] for e in standin_session.requests()] == ["/v1/models"]


# --- Identity characters ----------------------------------------------------------------------

REFUSED = [
    *map(chr, range(0x00, 0x20)),
    *map(chr, range(0x7F, 0xA0)),
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
]
KEPT = ["\u200e", "\u200f", "\u200c", "\u200d"]


def _read_user(raw: bytes) -> str | None:
    """The recorded x-llm-user for `raw`, or None when it is refused (invalid)."""
    try:
        return read_identity([(b"x-llm-user", raw)], required=False)["x-llm-user"]
    except IdentityProblem as problem:
        assert problem.kind == "invalid"
        return None


def test_no_refused_code_point_survives_into_an_identity_value_at_any_position() -> None:
    """Every control and bidi embedding/override/isolate, alone and at the start, middle and
    end: refused, or (whitespace to str.strip(): TAB, LF, VT, FF, CR, FS-US, NEL) stripped
    off an end; a recorded value never holds one."""
    for char in REFUSED:
        for value in (char, char + "admin", "ad" + char + "min", "admin" + char):
            kept = _read_user(value.encode())
            assert kept is None or not set(kept) & set(REFUSED), (hex(ord(char)), value)
            if not char.isspace() or value == "ad" + char + "min":
                assert kept is None, (hex(ord(char)), value)


def test_marks_and_joiners_are_kept_at_any_position() -> None:
    for char in KEPT:
        for value in (char, char + "admin", "ad" + char + "min", "admin" + char):
            assert _read_user(value.encode()) == value, hex(ord(char))


@pytest.mark.parametrize(
    "raw",
    [
        b"a\xf0\x82\x80\xaeb",  # U+202E, overlong in four bytes
        b"a\xe0\x80\xaeb",  # an overlong three-byte form
        b"a\xc0\x80b",  # overlong NUL
        b"a\xed\xa0\x80b",  # a UTF-16 surrogate (CESU-8)
        b"a\xe2\x80b",  # U+202E cut short
        b"a\xae\x80\xe2b",  # its bytes reversed
    ],
)
def test_invalid_or_overlong_utf8_is_refused(raw: bytes) -> None:
    with pytest.raises(IdentityProblem) as caught:
        read_identity([(b"x-llm-user", raw)], required=False)
    assert (caught.value.kind, caught.value.why) == ("invalid", "is not valid UTF-8")


async def test_identity_characters_on_the_wire(standin_session, sidecar) -> None:
    """Over a real connection (pipelined): refused code points sent as UTF-8 are a 400 with
    its record on an allowed path and an audited 404 naming no one on a refused one;
    marks and joiners are forwarded and recorded as sent."""
    standin_session.reset()
    hostile = [
        "\u0085",
        "\u009b",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
    ]
    cases: list[tuple[str, bytes, int, str]] = []
    for char in hostile:
        ends = [] if char.isspace() else [char + "x" + char]  # NEL at an end: stripped
        for value in ["ad" + char + "min", *ends]:
            cases.append((rid(), b"/v1/models", 400, value))
            cases.append((rid(), b"/sleep", 404, value))
    for char in KEPT:
        cases.append((rid(), b"/v1/models", 200, "ad" + char + "min"))
    data = b""
    for request_id, target, _, value in cases:
        fields = b"x-llm-source: s\r\nx-llm-request-type: chat\r\nx-llm-user: %s\r\n" % (
            value.encode()
        )
        data += request(b"GET", target, request_id, fields)
    replies = await answers(sidecar.url, data, len(cases))
    found = records(sidecar, [c[0] for c in cases])
    for (request_id, _, status, value), reply in zip(cases, replies, strict=True):
        record = found[request_id]
        assert reply.status == status, (value, reply.body)
        if status == 200:
            assert record["userId"] == value and record["outcome"] == "completed"
        else:
            assert record["userId"] == "unknown" and record["outcome"] == "rejected", value
            assert record["source"] == "unknown"  # the whole identity is unreadable
    forwarded = [e for e in standin_session.requests() if e["path"] == "/v1/models"]
    assert len(forwarded) == len(KEPT)
