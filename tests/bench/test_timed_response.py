"""What the load generator measures of one response, whatever the reads: events, token, end.

The framing itself is llhttp's, through the sidecar's reader, and is tested
with it (tests/sidecar/test_upstream.py); here, what the bench adds on top.
"""

from __future__ import annotations

import gc

import pytest

from bench.timed_response import MalformedResponse, TimedResponse

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


def read_split(raw: bytes, cut: int) -> tuple[TimedResponse, list[bool]]:
    """Feed `raw` in two reads at `cut`, stamping each read with its index as the time."""
    response = TimedResponse()
    done = []
    for t, piece in enumerate((raw[:cut], raw[cut:])):
        if piece:
            done.append(response.feed(piece, float(t)))
    return response, done


@pytest.mark.parametrize("raw", [SSE_ONE_PER_CHUNK, SSE_RECHUNKED], ids=["per-chunk", "rechunked"])
def test_sse_counts_do_not_depend_on_the_split(raw: bytes) -> None:
    for cut in range(len(raw) + 1):
        response, done = read_split(raw, cut)
        assert done[-1] is True and not any(done[:-1]), f"split at {cut}"
        assert response.status == 200
        assert response.events == len(EVENTS), f"split at {cut}"
        assert response.keep_alive and response.done
        assert response.finished_at == (0.0 if cut == len(raw) else 1.0)  # the last read's time


def test_first_content_is_the_first_token_not_the_role_event() -> None:
    raw = SSE_ONE_PER_CHUNK
    role_end = raw.index(EVENTS[0]) + len(EVENTS[0])
    response = TimedResponse()
    assert not response.feed(raw[:role_end], 1.0)
    assert response.first_content_at is None
    assert response.feed(raw[role_end:], 2.0)
    assert response.first_content_at == 2.0
    assert response.finished_at == 2.0


def test_a_token_split_across_reads_is_marked_at_the_next_token() -> None:
    token = SSE_ONE_PER_CHUNK.index(b'"content":"Hello"') + len(b'"content":')
    response = TimedResponse()
    assert not response.feed(SSE_ONE_PER_CHUNK[:token], 1.0)
    assert not response.feed(SSE_ONE_PER_CHUNK[token : token + 3], 2.0)
    assert response.first_content_at is None  # the pattern never arrived in one piece
    assert response.feed(SSE_ONE_PER_CHUNK[token + 3 :], 3.0)
    assert response.first_content_at == 3.0  # " world", the next token


def test_content_length_body_has_no_events_and_no_ttft() -> None:
    for cut in range(len(JSON_RESPONSE) + 1):
        response, done = read_split(JSON_RESPONSE, cut)
        assert done[-1] is True
        assert response.events == 0 and response.keep_alive
        assert response.first_content_at is None


def test_close_delimited_body_ends_at_eof_and_closes() -> None:
    response = TimedResponse()
    assert not response.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n", 0.0)
    assert not response.feed(EVENTS[1], 1.0)
    assert response.eof(2.0)
    assert (response.events, response.first_content_at) == (1, 1.0)
    assert (response.finished_at, response.keep_alive) == (2.0, False)


def test_a_framed_response_cut_short_is_not_complete_at_eof() -> None:
    response = TimedResponse()
    assert not response.feed(SSE_ONE_PER_CHUNK[:-5], 0.0)
    assert not response.eof(1.0)
    assert response.finished_at is None


def test_error_status_and_connection_close_are_reported() -> None:
    response = TimedResponse()
    raw = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}"
    assert response.feed(raw, 0.0)
    assert (response.status, response.keep_alive) == (503, False)
    http10 = TimedResponse()
    assert http10.feed(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0.0)
    assert not http10.keep_alive


def test_newline_runs_split_across_chunks_count_like_one_piece() -> None:
    pieces = [b"data: a\n", b"\n", b"data: b\n\n", b"\n", b"data: c\n", b"\n\n\n", b"\n"]
    whole = b"".join(pieces).count(b"\n\n")
    response = TimedResponse()
    assert response.feed(SSE_HEAD + chunked(pieces), 0.0)
    assert response.events == whole
    one_byte_chunks = TimedResponse()
    assert one_byte_chunks.feed(SSE_HEAD + chunked([bytes([b]) for b in b"".join(pieces)]), 0.0)
    assert one_byte_chunks.events == whole


@pytest.mark.parametrize(
    "reads",
    [
        [b"SMTP 200 OK\r\n\r\n"],
        [SSE_HEAD + b"zz\r\n"],
        [JSON_RESPONSE + b"extra"],
        [JSON_RESPONSE, b"x"],
    ],
    ids=["not-http", "bad-framing", "bytes-after-the-end", "a-read-after-the-end"],
)
def test_what_cannot_be_measured_raises_malformed_response(reads: list[bytes]) -> None:
    response = TimedResponse()
    with pytest.raises(MalformedResponse):
        for data in reads:
            response.feed(data, 0.0)


def _leftovers() -> list[str]:
    """Objects of the bench's reader or the sidecar's that only the cyclic GC could free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = (type(getattr(obj, "__self__", obj)) for obj in gc.garbage)
        return sorted(
            kind.__qualname__
            for kind in kinds
            if kind.__module__.startswith(("bench.", "sidecar_audit.", "httptools"))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_no_reference_cycle_outlives_a_response() -> None:
    gc.collect()  # free what earlier tests left, for real (DEBUG_SAVEALL would keep it)
    gc.disable()
    try:
        complete = TimedResponse()
        complete.feed(SSE_ONE_PER_CHUNK, 0.0)
        broken = TimedResponse()
        with pytest.raises(MalformedResponse):
            broken.feed(SSE_HEAD + b"zz\r\n", 0.0)
        abandoned = TimedResponse()  # e.g. timed out mid-stream; the connection closes it
        abandoned.feed(SSE_ONE_PER_CHUNK[:100], 0.0)
        abandoned.close()
        cut = TimedResponse()
        cut.feed(SSE_ONE_PER_CHUNK[:100], 0.0)
        cut.eof(1.0)
        del complete, broken, abandoned, cut
        assert _leftovers() == []
    finally:
        gc.enable()
