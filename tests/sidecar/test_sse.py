"""SSE decoding and usage-chunk filtering: exact, and independent of how the stream is split."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sidecar_audit.sse import SSEDecoder, UsageChunkFilter, is_usage_only

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = sorted(FIXTURES.glob("*.sse"))


def decode_all(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


def expected_payloads(raw: bytes) -> list[bytes]:
    """The data payloads of a fixture, read the obvious way (LF, at most one data line)."""
    payloads = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                payloads.append(line[len(b"data: ") :])
    return payloads


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_decoder_is_independent_of_split_point(path: Path) -> None:
    raw = path.read_bytes()
    whole = decode_all([raw])
    assert whole == expected_payloads(raw)
    for cut in range(len(raw) + 1):
        assert decode_all([raw[:cut], raw[cut:]]) == whole, f"split at {cut}"


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_decoder_byte_by_byte(path: Path) -> None:
    raw = path.read_bytes()
    assert decode_all([raw[i : i + 1] for i in range(len(raw))]) == expected_payloads(raw)


@pytest.mark.parametrize(
    ("stream", "payloads"),
    [
        (b"data: a\n\n", [b"a"]),
        (b"data: a\r\n\r\n", [b"a"]),
        (b"data: a\r\rdata: b\n\n", [b"a", b"b"]),
        (b"data:a\n\n", [b"a"]),
        (b"data:  two spaces\n\n", [b" two spaces"]),
        (b"data: line1\ndata: line2\n\n", [b"line1\nline2"]),
        (b": keep-alive\n\n", []),
        (b"event: ping\nid: 7\n\n", []),
        (b"event: message\ndata: x\nretry: 10\n\n", [b"x"]),
        (b"data\n\n", [b""]),
        (b"data: unterminated", []),
    ],
)
def test_decoder_rules(stream: bytes, payloads: list[bytes]) -> None:
    assert decode_all([stream]) == payloads
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == payloads


def filtered(raw: bytes, cuts: list[int]) -> bytes:
    usage_filter = UsageChunkFilter()
    out = []
    start = 0
    for cut in [*cuts, len(raw)]:
        out.append(usage_filter.feed(raw[start:cut]))
        start = cut
    out.append(usage_filter.flush())
    return b"".join(out)


def without_usage_event(raw: bytes) -> bytes:
    blocks = raw.split(b"\n\n")
    kept = [b for b in blocks[:-1] if not (b.startswith(b"data: {") and is_usage_only(b[6:]))]
    return b"".join(b + b"\n\n" for b in kept)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_usage_filter_removes_exactly_the_usage_event_at_any_split(path: Path) -> None:
    raw = path.read_bytes()
    expected = without_usage_event(raw)
    for cut in range(len(raw) + 1):
        assert filtered(raw, [cut]) == expected, f"split at {cut}"


def test_usage_filter_keeps_chunks_that_merely_mention_usage() -> None:
    chunk = {
        "id": "x",
        "choices": [{"index": 0, "delta": {"content": '"choices":[]'}}],
        "usage": None,
    }
    raw = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
    assert filtered(raw, []) == raw


def test_usage_filter_passes_complete_events_without_delay() -> None:
    usage_filter = UsageChunkFilter()
    first = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    assert usage_filter.feed(first + b'data: {"cho') == first
    assert usage_filter.feed(b'ices":[]}\n\n') == b'data: {"choices":[]}\n\n'  # no usage: kept


def _chunk(**fields: object) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return b"data: " + orjson.dumps({**base, **fields}) + b"\n\n"


def test_usage_filter_restores_the_fingerprint_vllm_moved_to_the_usage_chunk() -> None:
    token = {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}
    final = {
        "index": 0,
        "delta": {"content": ""},
        "logprobs": None,
        "finish_reason": "stop",
        "stop_reason": None,
    }
    usage = {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1}
    with_usage = (
        _chunk(choices=[token])
        + _chunk(choices=[final])
        + _chunk(choices=[], usage=usage, system_fingerprint="vllm-0.33.0-abc")
        + b"data: [DONE]\n\n"
    )
    without_usage = (
        _chunk(choices=[token])
        + _chunk(choices=[final], system_fingerprint="vllm-0.33.0-abc")
        + b"data: [DONE]\n\n"
    )
    for cut in range(len(with_usage) + 1):
        assert filtered(with_usage, [cut]) == without_usage, f"split at {cut}"


def test_usage_filter_releases_held_events_when_no_usage_arrives() -> None:
    final = {"index": 0, "delta": {}, "finish_reason": "length"}
    raw = _chunk(choices=[final]) + b"data: [DONE]\n\n"
    usage_filter = UsageChunkFilter()
    assert usage_filter.feed(raw) == b""  # held, waiting for the usage chunk
    assert usage_filter.flush() == raw


@pytest.mark.parametrize(
    ("tail", "expected_tail"),
    [
        # vLLM 0.33 passes kv_transfer_params explicitly, so it follows the fingerprint.
        (b',"kv_transfer_params":null}', b',"system_fingerprint":"fp","kv_transfer_params":null}'),
        (
            b',"kv_transfer_params":{"ids":[1,[2]],"s":"]\\"}"}}',
            b',"system_fingerprint":"fp","kv_transfer_params":{"ids":[1,[2]],"s":"]\\"}"}}',
        ),
        (b"}", b',"system_fingerprint":"fp"}'),
    ],
)
def test_fingerprint_goes_where_vllm_field_order_puts_it(tail: bytes, expected_tail: bytes) -> None:
    # A completions choice has its own prompt_token_ids: it must not be mistaken for the
    # top-level field, nor must brackets inside strings end the choices array early.
    head = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"text":"a]}\\"[","finish_reason":"stop",'
        b'"prompt_token_ids":null}]'
    )
    usage = (
        b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":1},'
        b'"system_fingerprint":"fp"}\n\n'
    )
    raw = head + tail + b"\n\n" + usage + b"data: [DONE]\n\n"
    assert filtered(raw, []) == head + expected_tail + b"\n\ndata: [DONE]\n\n"
