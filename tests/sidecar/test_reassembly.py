"""Per-choice reassembly of streamed answers, fed from real SSE fixtures split at every offset."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar_audit.capture import StreamCapture
from sidecar_audit.reassembly import StreamAssembler
from sidecar_audit.record import usage_view
from sidecar_audit.sse import SSEDecoder

FIXTURES = Path(__file__).parent / "fixtures"


def assemble(raw: bytes, cut: int | None = None, max_chars: int = 10_000) -> StreamAssembler:
    decoder = SSEDecoder()
    assembler = StreamAssembler(max_chars)
    pieces = [raw] if cut is None else [raw[:cut], raw[cut:]]
    for piece in pieces:
        for payload in decoder.feed(piece):
            assembler.add(payload)
    return assembler


def test_tool_calls_reasoning_and_content() -> None:
    a = assemble((FIXTURES / "chat_tools_reasoning.sse").read_bytes())
    assert a.result() == [
        {
            "index": 0,
            "content": "Sure — ünïcode ✓",
            "reasoningContent": "Think hard.",
            "toolCalls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
            "finishReason": "tool_calls",
        }
    ]
    assert a.usage == {"prompt_tokens": 12, "total_tokens": 20, "completion_tokens": 8}
    assert a.model == "qwen"
    assert a.events == 11  # ten JSON chunks and [DONE]; the keep-alive comment is no event
    assert a.done and a.error is None and not a.truncated


def test_result_is_the_same_at_every_split_point() -> None:
    raw = (FIXTURES / "chat_tools_reasoning.sse").read_bytes()
    whole = assemble(raw).result()
    for cut in range(len(raw) + 1):
        assert assemble(raw, cut).result() == whole


def test_completions_with_two_choices() -> None:
    a = assemble((FIXTURES / "completions_n2.sse").read_bytes())
    assert a.result() == [
        {"index": 0, "text": "Hello world", "finishReason": "length"},
        {"index": 1, "text": "Hello world", "finishReason": "length"},
    ]
    assert a.usage == {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4}


def test_midstream_error_is_kept() -> None:
    a = assemble((FIXTURES / "chat_midstream_error.sse").read_bytes())
    assert a.error == {
        "message": "engine died",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
    assert a.result()[0]["content"] == "Par"
    assert a.result()[0]["finishReason"] is None


def test_text_is_capped_and_marked_truncated() -> None:
    a = assemble((FIXTURES / "chat_tools_reasoning.sse").read_bytes(), max_chars=6)
    choice = a.result()[0]
    assert choice["content"] == "Sure —"
    assert choice["reasoningContent"] == "Think "
    assert a.truncated


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"choices": "nope"}',
        b'{"choices": [7, {"index": "x"}]}',
        b'{"choices": [{"delta": {"tool_calls": [{"index": "a", "function": 3}]}}]}',
    ],
)
def test_garbage_never_raises(payload: bytes) -> None:
    a = StreamAssembler(100)
    a.add(payload)
    a.result()
    assert a.events == 1


def test_capture_marks_first_output_token_time() -> None:
    raw = (FIXTURES / "chat_tools_reasoning.sse").read_bytes()
    events = [e + b"\n\n" for e in raw.split(b"\n\n")[:-1]]
    ticks = iter(range(100, 200))
    capture = StreamCapture(10_000, lambda: float(next(ticks)))
    for event in events:
        capture.feed(event)
    # The role chunk carries no output; the first reasoning delta (second event) does.
    assert capture.first_token_at == 100.0
    view = capture.finish()
    assert view["bytes"] == len(raw)
    assert capture.assembler.result()[0]["content"] == "Sure — ünïcode ✓"


def test_responses_api_stream() -> None:
    a = assemble((FIXTURES / "responses_tool_reasoning.sse").read_bytes())
    assert a.result() == [
        {
            "index": 0,
            "content": "Rain in Bergen — as usual ☔",
            "reasoningContent": "Hmm, weather.",
            "toolCalls": [
                {
                    "index": 1,
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'},
                }
            ],
            "finishReason": "completed",
        }
    ]
    assert a.usage is not None and a.usage["total_tokens"] == 33
    assert usage_view(a.usage) == {"promptTokens": 11, "completionTokens": 22, "totalTokens": 33}
    assert a.model == "qwen" and a.events == 11 and not a.done


def test_anthropic_messages_stream_text_thinking_tool_use_and_usage() -> None:
    raw = (FIXTURES / "messages_thinking_tools.sse").read_bytes()
    for cut in range(0, len(raw) + 1, 7):
        a = assemble(raw, cut)
        assert a.result() == [
            {
                "index": 0,
                "content": "Grüße — checking ☔",
                "reasoningContent": "Let me think.",
                "toolCalls": [
                    {
                        "index": 2,
                        "id": "chatcmpl-tool-1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
                "finishReason": "tool_use",
            }
        ], f"split at {cut}"
        assert a.model == "qwen" and a.api == "messages" and a.terminal_seen
        assert usage_view(a.usage) == {"promptTokens": 9, "completionTokens": 14, "totalTokens": 23}


def test_a_responses_or_messages_stream_cut_before_its_terminal_event_is_an_error() -> None:
    raw = (FIXTURES / "messages_thinking_tools.sse").read_bytes()
    cut = raw.rindex(b"event: message_stop")
    capture = StreamCapture(10_000, lambda: 0.0)
    capture.feed(raw[:cut])
    capture.finish()
    assert capture.assembler.error["type"] == "stream_truncated"
    whole = StreamCapture(10_000, lambda: 0.0)
    whole.feed(raw)
    whole.finish()
    assert whole.assembler.error is None


@pytest.mark.parametrize("piece", [1, 7, 113, 4095, 4096, 4097, 20_000, None])
def test_a_long_stream_captured_in_any_pieces_is_the_stream_assembled_whole(piece) -> None:
    """The capture decodes in blocks (capture.DECODE_BLOCK) after the first token: however
    the chunks fall against the blocks, the record's answer is the whole stream's."""
    fixture = (FIXTURES / "chat_tools_reasoning.sse").read_bytes()
    raw = fixture * 40  # ~40 streams' worth of events: many decode blocks
    whole = assemble(raw)
    capture = StreamCapture(1_000_000, lambda: 0.0)
    size = piece or len(raw)
    for start in range(0, len(raw), size):
        capture.feed(raw[start : start + size])
    body = capture.finish()
    assert capture.assembler.result() == whole.result()
    assert (capture.assembler.events, capture.assembler.usage) == (whole.events, whole.usage)
    assert body["bytes"] == len(raw) and not body["truncated"]
