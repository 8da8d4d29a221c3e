"""SSE decoding and usage-chunk filtering: exact, and independent of how the stream is split."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sidecar_audit.sse import (
    FingerprintMemo,
    SSEDecoder,
    UsageChunkFilter,
    terminal_detector,
)

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


def filtered(raw: bytes, cuts: list[int], memo: FingerprintMemo | None = None) -> bytes:
    usage_filter = UsageChunkFilter(memo)
    out = []
    start = 0
    for cut in [*cuts, len(raw)]:
        out.append(usage_filter.feed(raw[start:cut]))
        start = cut
    out.append(usage_filter.flush())
    return b"".join(out)


def is_usage_only(payload: bytes) -> bool:
    """The test's own oracle: a chunk that carries usage and no choices."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and bool(obj.get("usage"))


def without_usage_event(raw: bytes) -> bytes:
    blocks = raw.split(b"\n\n")
    kept = [b for b in blocks[:-1] if not (b.startswith(b"data: {") and is_usage_only(b[6:]))]
    return b"".join(b + b"\n\n" for b in kept)


def warm_memo(raw: bytes) -> FingerprintMemo:
    """A memo that has seen this upstream's usage chunk before (any earlier stream)."""
    memo = FingerprintMemo()
    for payload in decode_all([raw]):
        if is_usage_only(payload):
            memo.learn(orjson.loads(payload).get("system_fingerprint"))
    return memo


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_usage_filter_removes_exactly_the_usage_event_at_any_split(path: Path) -> None:
    raw = path.read_bytes()
    expected = without_usage_event(raw)
    for cut in range(len(raw) + 1):
        assert filtered(raw, [cut], warm_memo(raw)) == expected, f"split at {cut}"


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
    "after",
    [
        b"data: [DONE]\n\n",
        # vLLM's mid-stream error event, then [DONE] (openai/chat_completion/serving.py:505-507)
        b'data: {"error": {"message": "boom", "type": "BadRequestError", "param": null, '
        b'"code": 400}}\n\ndata: [DONE]\n\n',
        # vLLM's --sse-keep-alive-interval comment (serve/utils/sse_keep_alive.py)
        b": keep-alive\n\ndata: [DONE]\n\n",
    ],
)
def test_what_ends_a_stream_without_usage_never_overtakes_a_held_chunk(after: bytes) -> None:
    # A cold memo holds the terminal chunk for the usage chunk; when the stream ends
    # without one, the client must get vLLM's order at every split (the token fast
    # path once let `[DONE]` through ahead of the held chunk).
    raw = _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]) + after
    for cut in range(len(raw) + 1):
        assert filtered(raw, [cut]) == raw, f"split at {cut}"


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


# --- n > 1: every choice streams as generated -------------------------------------------------


def _choice_chunk(index: int, text: str, finish: str | None = None) -> bytes:
    choice: dict[str, object] = {
        "index": index,
        "delta": {"content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    if finish is not None:
        choice["stop_reason"] = None
    return _chunk(choices=[choice], kv_transfer_params=None)


def interleaved_n3(fingerprint: str | None) -> tuple[list[bytes], list[bytes]]:
    """vLLM's events for n=3, choices finishing at steps 1, 3 and 2: with and without usage."""
    steps = [
        [(0, "a", None), (1, "b", None), (2, "c", None)],
        [(0, "", "stop"), (1, "b", None), (2, "c", None)],
        [(1, "b", None), (2, "", "length")],
        [(1, "", "stop")],
    ]
    with_usage: list[bytes] = []
    without: list[bytes] = []
    for step in steps:
        for index, text, finish in step:
            with_usage.append(_choice_chunk(index, text, finish))
            plain = _choice_chunk(index, text, finish)
            if finish is not None and fingerprint is not None:
                plain = plain.replace(
                    b',"kv_transfer_params"',
                    b',"system_fingerprint":'
                    + orjson.dumps(fingerprint)
                    + b',"kv_transfer_params"',
                )
            without.append(plain)
    usage = {"prompt_tokens": 2, "total_tokens": 9, "completion_tokens": 7}
    fields: dict[str, object] = {"choices": [], "usage": usage}
    if fingerprint is not None:
        fields["system_fingerprint"] = fingerprint
    with_usage += [_chunk(**fields), b"data: [DONE]\n\n"]
    without.append(b"data: [DONE]\n\n")
    return with_usage, without


def test_n3_streams_every_event_as_it_arrives_with_the_fingerprint_in_place() -> None:
    with_usage, without = interleaved_n3("vllm-0.33.0-abc")
    memo = FingerprintMemo()
    memo.learn("vllm-0.33.0-abc")
    usage_filter = UsageChunkFilter(memo)
    outputs = [usage_filter.feed(event) for event in with_usage]
    # each event leaves in the call that received it: nothing waits for a later event
    assert outputs[: len(without) - 1] == without[:-1]
    assert outputs[-2] == b""  # the usage chunk the sidecar asked for
    assert outputs[-1] == without[-1]
    assert usage_filter.flush() == b""


def test_n3_cold_memo_holds_only_terminal_chunks_and_learns_the_fingerprint() -> None:
    with_usage, without = interleaved_n3("fp-1")
    memo = FingerprintMemo()
    usage_filter = UsageChunkFilter(memo)
    outputs = [usage_filter.feed(event) for event in with_usage]
    for event, out in zip(with_usage[:-2], outputs, strict=False):
        is_terminal = b'"finish_reason":"' in event
        assert out == (b"" if is_terminal else event)  # other choices keep streaming
    released = outputs[-2]
    assert released == b"".join(e for e in without[:-1] if b'"finish_reason":"' in e)
    assert memo.known and memo.value == "fp-1"
    # the next stream of the same upstream is stamped live
    again = UsageChunkFilter(memo)
    assert [again.feed(e) for e in with_usage][:-2] == without[:-1]


def test_no_fingerprint_mode_stamps_nothing() -> None:
    with_usage, without = interleaved_n3(None)
    memo = FingerprintMemo()
    memo.learn(None)
    assert filtered(b"".join(with_usage), [], memo) == b"".join(without)


def test_batched_prompts_on_completions_stream_live() -> None:
    # two prompts, n=2: indexes 0..3 (output.index + prompt_index * n), vLLM serving.py
    def cmpl(index: int, text: str, finish: str | None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return (
            b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":['
            + orjson.dumps({**choice, "stop_reason": None})
            + b'],"kv_transfer_params":null}\n\n'
        )

    events = [cmpl(2, "x", None), cmpl(0, "y", "length"), cmpl(3, "z", None), cmpl(1, "w", None)]
    usage = (
        b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":1},'
        b'"system_fingerprint":"fp"}\n\n'
    )
    memo = FingerprintMemo()
    memo.learn("fp")
    usage_filter = UsageChunkFilter(memo)
    outs = [usage_filter.feed(e) for e in events]
    assert outs[0] == events[0] and outs[2] == events[2] and outs[3] == events[3]
    assert outs[1] == events[1].replace(
        b',"kv_transfer_params"', b',"system_fingerprint":"fp","kv_transfer_params"'
    )
    assert usage_filter.feed(usage) == b""


def test_force_include_usage_passes_everything_through() -> None:
    # --enable-force-include-usage: usage on every chunk and the usage chunk, always
    # (vLLM serve/utils/api_utils.py should_include_usage); the client gets them all.
    usage = {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1}
    raw = (
        _chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}], usage=usage)
        + _chunk(
            choices=[{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}], usage=usage
        )
        + _chunk(choices=[], usage=usage, system_fingerprint="fp")
        + b"data: [DONE]\n\n"
    )
    for cut in range(len(raw) + 1):
        assert filtered(raw, [cut]) == raw, f"split at {cut}"


def test_keep_alive_comments_pass_through() -> None:
    token = _choice_chunk(0, "a")
    raw = token + b": keep-alive\n\n" + _choice_chunk(0, "", "stop") + b"data: [DONE]\n\n"
    memo = FingerprintMemo()
    memo.learn(None)
    assert filtered(raw, [len(token) + 3], memo) == raw


# --- the terminal event of each API ------------------------------------------------------------

TERMINALS = {
    "chat_tools_reasoning.sse": "/v1/chat/completions",
    "chat_midstream_error.sse": "/v1/chat/completions",
    "completions_n2.sse": "/v1/completions",
    "responses_tool_reasoning.sse": "/v1/responses",
    "messages_thinking_tools.sse": "/v1/messages",
}


def detected_at(path: str, pieces: list[bytes]) -> list[int]:
    detector = terminal_detector(path)
    return [i for i, piece in enumerate(pieces) if detector.feed(piece)]


@pytest.mark.parametrize(("name", "path"), sorted(TERMINALS.items()))
def test_terminal_event_found_in_the_chunk_that_completes_it_at_any_split(
    name: str, path: str
) -> None:
    raw = (FIXTURES / name).read_bytes()
    assert raw.endswith(b"\n\n")
    for cut in range(len(raw) + 1):
        found = detected_at(path, [raw[:cut], raw[cut:]])
        # the blank line that ends the terminal event is in the second piece unless the
        # cut falls at the very end
        assert found == ([0] if cut == len(raw) else [1]), f"split at {cut}"
    assert detected_at(path, [raw[i : i + 1] for i in range(len(raw))]) == [len(raw) - 1]


@pytest.mark.parametrize(
    ("path", "stream"),
    [
        ("/v1/chat/completions", b'data: {"choices":[]}\n\n'),
        ("/v1/chat/completions", b"data: x\ndata: [DONE]\n\n"),  # one event, data "x\n[DONE]"
        (
            "/v1/responses",
            b'event: response.in_progress\ndata: {"type":"response.in_progress"}\n\n',
        ),
        (
            "/v1/responses",
            b'data: {"type":"response.output_text.delta","delta":"response.completed"}\n\n',
        ),
        ("/v1/messages", b'event: message_delta\ndata: {"type":"message_delta"}\n\n'),
        (
            "/v1/messages",
            b'data: {"type":"content_block_delta","delta":{"text":"message_stop"}}\n\n',
        ),
        ("/v1/messages", b"data: [DONE]\n\n"),  # not Anthropic's terminal
        ("/v1/messages", b'event: message_stop\ndata: {"type":"message_stop"}\n'),  # unfinished
    ],
)
def test_not_terminal(path: str, stream: bytes) -> None:
    assert detected_at(path, [stream]) == []


@pytest.mark.parametrize(
    ("path", "stream"),
    [
        ("/v1/chat/completions", b"data:[DONE]\r\n\r\n"),
        ("/v1/responses", b'event: response.failed\ndata: {"type":"response.failed"}\n\n'),
        ("/v1/responses", b'event: response.incomplete\ndata: {"type":"response.incomplete"}\n\n'),
        ("/v1/responses", b'event: error\ndata: {"type":"error","message":"x"}\n\n'),
        ("/v1/messages", b'event: error\ndata: {"type":"error","error":{"type":"api_error"}}\n\n'),
    ],
)
def test_terminal(path: str, stream: bytes) -> None:
    assert detected_at(path, [stream]) == [0]


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"a":1}\n\ndata: [DONE]\r\n\r\n',
        b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n',
        b'data: {"c":"data: [DONE]\\n\\n"}\n\ndata: [DONE]\n\n',
    ],
)
def test_the_done_detector_agrees_with_decoding_at_every_two_splits(stream: bytes) -> None:
    # A CR first seen mid-stream must not lose the unfinished event the LF-only bytes left.
    from sidecar_audit.sse import SSEDecoder, terminal_detector

    for i in range(1, len(stream)):
        for j in range(i, len(stream)):
            chunks = [c for c in (stream[:i], stream[i:j], stream[j:]) if c]
            decoder, detector = SSEDecoder(), terminal_detector("/v1/chat/completions")
            expected = [b"[DONE]" in decoder.feed(c) for c in chunks]
            assert [detector.feed(c) for c in chunks] == expected, chunks


def test_a_keep_alive_comment_after_a_held_chunk_stays_behind_it_until_usage_comes() -> None:
    # Cold memo: the terminal chunk waits for the usage chunk; a comment vLLM sent after it
    # (--sse-keep-alive-interval) must not reach the client first, and is never stamped.
    final = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    usage = {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1}
    comment = b": keep-alive\n\n"
    raw = (
        _chunk(choices=[final])
        + comment
        + _chunk(choices=[], usage=usage, system_fingerprint="fp")
        + b"data: [DONE]\n\n"
    )
    expected = _chunk(choices=[final], system_fingerprint="fp") + comment + b"data: [DONE]\n\n"
    for cut in range(len(raw) + 1):
        assert filtered(raw, [cut]) == expected, f"split at {cut}"
