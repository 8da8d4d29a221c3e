"""The load generator's response reader: framing, event counts and timings, whatever the reads."""

from __future__ import annotations

import pytest

from bench.httpwire import ProtocolError, ResponseReader

EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":" world"}}]}\n\n',
    b"data: [DONE]\n\n",
]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# One event per chunk (vLLM), and events re-chunked across boundaries (a proxy's reads).
SSE_ONE_PER_CHUNK = SSE_HEAD + chunked(EVENTS)
STREAM = b"".join(EVENTS)
SSE_RECHUNKED = SSE_HEAD + chunked([STREAM[i : i + 7] for i in range(0, len(STREAM), 7)])
JSON_BODY = b'{"choices":[{"message":{"content":"Hello world"}}]}'
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
    % (len(JSON_BODY), JSON_BODY)
)


def read_split(raw: bytes, cut: int) -> tuple[ResponseReader, list[bool]]:
    """Feed `raw` in two reads at `cut`, stamping each read with its index as the time."""
    reader = ResponseReader()
    done = []
    for t, piece in enumerate((raw[:cut], raw[cut:])):
        if piece:
            done.append(reader.feed(piece, float(t)))
    return reader, done


@pytest.mark.parametrize("raw", [SSE_ONE_PER_CHUNK, SSE_RECHUNKED], ids=["per-chunk", "rechunked"])
def test_sse_counts_do_not_depend_on_the_split(raw: bytes) -> None:
    for cut in range(len(raw) + 1):
        reader, done = read_split(raw, cut)
        assert done[-1] is True and not any(done[:-1]), f"split at {cut}"
        assert reader.status == 200
        assert reader.events == len(EVENTS), f"split at {cut}"
        assert reader.body_bytes == len(STREAM)
        assert reader.keep_alive


def test_first_content_is_the_first_token_not_the_role_event() -> None:
    raw = SSE_ONE_PER_CHUNK
    role_end = raw.index(EVENTS[0]) + len(EVENTS[0])
    reader = ResponseReader()
    assert not reader.feed(raw[:role_end], 1.0)
    assert reader.first_content_at is None
    assert reader.feed(raw[role_end:], 2.0)
    assert reader.first_content_at == 2.0
    assert reader.first_byte_at == 1.0
    assert reader.finished_at == 2.0


def test_content_length_body_has_no_events_and_no_ttft() -> None:
    for cut in range(len(JSON_RESPONSE) + 1):
        reader, done = read_split(JSON_RESPONSE, cut)
        assert done[-1] is True
        assert (reader.events, reader.body_bytes) == (0, len(JSON_BODY))
        assert reader.first_content_at is None


def test_close_delimited_body_ends_at_eof_and_closes() -> None:
    reader = ResponseReader()
    assert not reader.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n", 0.0)
    assert not reader.feed(EVENTS[1], 1.0)
    assert reader.eof(2.0)
    assert (reader.events, reader.finished_at, reader.keep_alive) == (1, 2.0, False)


def test_error_status_and_connection_close_are_reported() -> None:
    reader = ResponseReader()
    raw = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}"
    assert reader.feed(raw, 0.0)
    assert (reader.status, reader.keep_alive) == (503, False)


def test_newline_runs_split_across_chunks_count_like_one_piece() -> None:
    pieces = [b"data: a\n", b"\n", b"data: b\n\n", b"\n", b"data: c\n", b"\n\n\n"]
    reader = ResponseReader()
    assert reader.feed(SSE_HEAD + chunked(pieces), 0.0)
    assert reader.events == b"".join(pieces).count(b"\n\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP 200 OK\r\n\r\n",
        SSE_HEAD + b"zz\r\n",
        SSE_HEAD + b"2\r\nabXX",
        JSON_RESPONSE + b"extra",
    ],
    ids=["status-line", "chunk-size", "chunk-end", "trailing-bytes"],
)
def test_malformed_responses_raise(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseReader().feed(raw, 0.0)
