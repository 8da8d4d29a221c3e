"""Connection-level abuse against the real sidecar process: framing must stay exact.

An HTTP/1.0 client cannot receive chunked coding, so a streamed answer to it is
delimited by the end of the connection. If the sidecar keeps that connection
open (the client asked for keep-alive), the client never sees the end of its
stream, and the answer to the next request on the connection is glued into the
body of the first — on a connection a front proxy shares, another client's answer.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from tests.hostile.test_bad_input import audit, chat

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


def http10(request_id: str, body: bytes, *, keep_alive: bool) -> bytes:
    lines = [b"POST /v1/chat/completions HTTP/1.0", b"Host: x"]
    lines += [f"{k}: {v}".encode() for k, v in audit(request_id)]
    lines.append(f"Content-Length: {len(body)}".encode())
    if keep_alive:
        lines.append(b"Connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def test_a_close_delimited_stream_to_an_http10_keepalive_client_ends_with_the_connection(
    sidecar,
) -> None:
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    first, second = (f"h10-{uuid.uuid4().hex[:12]}" for _ in range(2))
    # A streamed request, then (pipelined) a plain one on the same connection.
    writer.write(
        http10(first, orjson.dumps(chat(stream=True)), keep_alive=True)
        + http10(second, orjson.dumps(chat()), keep_alive=True)
    )
    try:
        async with asyncio.timeout(15):
            received = await reader.read(-1)  # an HTTP/1.0 stream ends when the connection does
    except TimeoutError:
        pytest.fail("the streamed answer never ended: the connection was kept open")
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert body.endswith(b"data: [DONE]\n\n")
    assert b"HTTP/1." not in body, "another answer was glued into the stream"
