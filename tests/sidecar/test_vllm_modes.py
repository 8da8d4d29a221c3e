"""vLLM's optional stream modes through the real sidecar process in front of the stand-in.

`--enable-force-include-usage` (vLLM 0.33 `serve/utils/api_utils.py:273-285`
`should_include_usage`, flag `common/cli_args.py:162`): usage and continuous usage on
every chat/completion chunk and the usage chunk whatever the request asked. The client
gets that stream byte for byte (the sidecar's usage filter must not strip it:
`sse.UsageChunkFilter` goes to pass-through on the first choice chunk with usage).

`--sse-keep-alive-interval N` (`serve/utils/sse_keep_alive.py:21-60`, wrapping only
`/v1/chat/completions` and `/v1/completions`, `common/cli_args.py:164-170`):
`: keep-alive\\n\\n` after N idle seconds, the wait for the first token included. The
comments reach the client where vLLM put them, none lost, none added, and nothing of
them gets into the record. See vllm_standin/WIRE_FORMAT.md "Server flags".

`created` is pinned (`x-standin-created`) and the same `x-request-id` goes direct and
through the sidecar (vLLM's chunk ids are built from it), so a direct and a proxied
stream can be compared byte for byte.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.sidecar_fixture import AUDIT_HEADERS, Sidecar
from tests.standin_fixture import Standin, header

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the auditors"}],
        "stream": True,
    },
    "/v1/completions": {"model": MODEL, "prompt": "Say hello to the auditors", "stream": True},
}
PATHS = sorted(BODIES)
# None: the client does not ask for usage (the sidecar adds `include_usage` for itself).
INCLUDE_USAGE = [None, True]
COMMENT = b": keep-alive"
DONE = b"data: [DONE]"


def rid() -> str:
    return f"t-{uuid.uuid4().hex}"


def request_body(path: str, include_usage: bool | None, **extra: Any) -> dict[str, Any]:
    body = {**BODIES[path], **extra}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


@dataclass
class Streamed:
    """A streamed answer as the client read it."""

    reads: list[bytes]  # each read, in order

    @property
    def body(self) -> bytes:
        return b"".join(self.reads)

    @property
    def blocks(self) -> list[bytes]:
        """Each SSE event or comment, without its blank line (vLLM frames with LF only)."""
        body = self.body
        assert body.endswith(b"\n\n"), body[-80:]
        return body[:-2].split(b"\n\n")

    @property
    def payloads(self) -> list[bytes]:
        return [b[6:] for b in self.blocks if b.startswith(b"data: ")]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """Every JSON chunk ([DONE] left out)."""
        return [orjson.loads(p) for p in self.payloads if p != b"[DONE]"]

    def read_of(self, block: bytes) -> int:
        """Index of the read that completed the first occurrence of `block`."""
        at = self.body.index(block + b"\n\n") + len(block) + 2
        size = 0
        for i, read in enumerate(self.reads):
            size += len(read)
            if size >= at:
                return i
        raise AssertionError(f"{block!r} not read")


async def stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> Streamed:
    reads: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(body), headers=headers) as response,
    ):
        assert response.status == 200, await response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.content.iter_any():
            reads.append(chunk)
    return Streamed(reads)


def headers_for(request_id: str, **controls: str) -> dict[str, str]:
    return {
        **AUDIT_HEADERS,
        "x-request-id": request_id,
        "content-type": "application/json",
        "x-standin-created": "1700000000",
        **controls,
    }


def texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    """The answer per choice index, from chat deltas or completion texts."""
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            out[choice["index"]] = out.get(choice["index"], "") + (piece or "")
    return out


def recorded_texts(record: dict[str, Any]) -> dict[int, str]:
    return {
        c["index"]: c["content"] if "content" in c else c["text"]
        for c in record["response"]["choices"]
    }


def forced(client: Streamed) -> bool:
    """vLLM's forced usage: on the choice chunks too."""
    return any(chunk["choices"] and "usage" in chunk for chunk in client.chunks)


def usage_of(chunk: dict[str, Any]) -> dict[str, int]:
    usage = chunk["usage"]
    return {
        "promptTokens": usage["prompt_tokens"],
        "completionTokens": usage["completion_tokens"],
        "totalTokens": usage["total_tokens"],
    }


async def vllm_usage(standin: Standin, path: str, body: dict[str, Any], controls: dict) -> dict:
    """The usage vLLM reports for this request: its usage chunk, asked for directly."""
    asked = {**body, "stream_options": {"include_usage": True}}
    direct = await stream(f"{standin.url}{path}", asked, headers_for(rid(), **controls))
    final = direct.chunks[-1]
    assert final["choices"] == []
    return usage_of(final)


def journal_entry(standin: Standin, request_id: str) -> dict[str, Any]:
    """The stand-in's journal entry of the (one, finished) request with this id."""
    return standin.wait_for(
        lambda e: header(e, "x-request-id") == request_id and e["outcome"] == "completed"
    )


def check_record(
    sidecar: Sidecar,
    request_id: str,
    client: Streamed,
    usage: dict[str, int],
    include_usage: bool | None,
    sent: dict[str, Any],
) -> dict[str, Any]:
    """The record of a streamed exchange: `client` is what the client read, `usage` vLLM's
    final usage, `sent` the stand-in's journal entry of what vLLM sent the sidecar."""
    record = sidecar.wait_for_records([request_id]).by_id()[request_id]
    assert record["outcome"] == "completed" and record["statusCode"] == 200
    assert record["usage"] == usage
    assert recorded_texts(record) == texts(client.chunks)
    finish = {c["index"]: c["finish_reason"] for ch in client.chunks for c in ch["choices"]}
    assert {c["index"]: c["finishReason"] for c in record["response"]["choices"]} == finish
    # every data event vLLM sent (the usage chunk the sidecar asked for and [DONE]
    # included) was an event of the record; no comment was one, none was unreadable
    assert record["response"]["events"] == sent["events_sent"]
    extra = 1 if include_usage is None and not forced(client) else 0  # the usage chunk
    assert sent["events_sent"] == len(client.payloads) + extra
    assert "invalidEvents" not in record["response"]
    assert record["response"]["streamError"] is None
    assert record["request"].get("usageRequestedBySidecar", False) is (include_usage is None)
    return record


# --- --enable-force-include-usage -------------------------------------------------------------


@pytest.mark.parametrize("include_usage", INCLUDE_USAGE, ids=["client-no-usage", "client-usage"])
@pytest.mark.parametrize("path", PATHS)
async def test_force_include_usage_reaches_the_client_as_vllm_sent_it(
    start_standin: Callable[..., Standin],
    start_sidecar: Callable[..., Sidecar],
    path: str,
    include_usage: bool | None,
) -> None:
    """n=2, choices of different lengths, a fresh sidecar (its fingerprint memo cold): the
    client gets vLLM's forced usage on every chunk and the usage chunk, byte for byte what
    the stand-in sends directly; the record has the final usage and the whole text."""
    standin = start_standin(enable_force_include_usage=True, ttft_ms=10, itl_ms=5, tokens=8)
    sidecar = start_sidecar(standin.url)
    controls = {"x-standin-choice-tokens": "2,5"}
    body = request_body(path, include_usage, n=2)
    request_id = rid()
    proxied = await stream(f"{sidecar.url}{path}", body, headers_for(request_id, **controls))
    sent = journal_entry(standin, request_id)
    direct = await stream(f"{standin.url}{path}", body, headers_for(request_id, **controls))
    assert proxied.body == direct.body
    # ... and that is vLLM's forced-usage stream, whatever the client asked:
    assert proxied.payloads[-1] == b"[DONE]"
    chunks = proxied.chunks
    assert all("usage" in chunk for chunk in chunks)
    assert chunks[-1]["choices"] == [] and "system_fingerprint" in chunks[-1]
    assert not any("system_fingerprint" in chunk for chunk in chunks[:-1])
    texts_seen = texts(chunks)
    assert sorted(texts_seen) == [0, 1] and texts_seen[0] != texts_seen[1]
    usage = usage_of(chunks[-1])
    assert usage == await vllm_usage(standin, path, request_body(path, None, n=2), controls)
    record = check_record(sidecar, request_id, proxied, usage, include_usage, sent)
    assert record["response"]["bytes"] == sent["response_bytes"] == len(proxied.body)


# --- --sse-keep-alive-interval ----------------------------------------------------------------


def runs(blocks: list[bytes]) -> list[bytes]:
    """The blocks with each run of comments as one: how many comments fill an idle gap
    is up to vLLM's timer, that the gap has them and where is not."""
    out: list[bytes] = []
    for block in blocks:
        if not (block == COMMENT and out and out[-1] == COMMENT):
            out.append(block)
    return out


@pytest.mark.parametrize("include_usage", INCLUDE_USAGE, ids=["client-no-usage", "client-usage"])
@pytest.mark.parametrize("path", PATHS)
async def test_keep_alive_comments_reach_the_client_where_vllm_sent_them(
    start_standin: Callable[..., Standin],
    start_sidecar: Callable[..., Sidecar],
    path: str,
    include_usage: bool | None,
) -> None:
    """Idle 150 ms before the first token and 120 ms between tokens, a comment every 50 ms
    of silence: the client gets every comment vLLM sent, in the same gaps of the stream,
    the first one before the first token is even generated; the record is vLLM's answer."""
    standin = start_standin(sse_keep_alive_interval=0.05, ttft_ms=150, itl_ms=120, tokens=3)
    sidecar = start_sidecar(standin.url)
    body = request_body(path, include_usage)
    request_id = rid()
    standin.reset()
    proxied = await stream(f"{sidecar.url}{path}", body, headers_for(request_id))
    sent = journal_entry(standin, request_id)
    direct = await stream(f"{standin.url}{path}", body, headers_for(request_id))

    blocks = proxied.blocks
    assert blocks.count(COMMENT) == sent["comments_sent"] >= 4  # none lost, none added
    # the same stream as direct, comments in the same places: before the first token
    # and between every two tokens, never in the middle of an event
    assert runs(blocks) == runs(direct.blocks)
    assert runs(blocks).count(COMMENT) == 4  # the wait for the first token, 3 between steps
    # live: the first comment was read before vLLM had even produced the first token
    assert blocks[0] == COMMENT
    first_data = next(b for b in blocks if b != COMMENT)
    assert proxied.read_of(COMMENT) < proxied.read_of(first_data)

    usage = await vllm_usage(standin, path, request_body(path, None), {})
    record = check_record(sidecar, request_id, proxied, usage, include_usage, sent)
    assert "keep-alive" not in orjson.dumps(record["response"]["choices"]).decode()
    # the record's digest covers vLLM's whole body, comments included
    assert record["response"]["bytes"] == sent["response_bytes"]


def is_terminal(block: bytes) -> bool:
    if not block.startswith(b"data: {"):
        return False
    return any(c["finish_reason"] is not None for c in orjson.loads(block[6:])["choices"])


def as_a_cold_sidecar_sends(blocks: list[bytes]) -> list[bytes]:
    """The stream vLLM sends without usage, as a sidecar that has not seen vLLM's
    fingerprint yet relays it (sse.UsageChunkFilter): a choice's terminal chunk waits for
    the usage chunk (which comes right before [DONE]) to get its fingerprint; the other
    choices stream on meanwhile, and a comment vLLM sent after a held chunk stays behind
    it (vLLM's order relative to the held chunk)."""
    out: list[bytes] = []
    held: list[bytes] = []
    for block in blocks:
        if block == DONE:
            out += held
            held = []
            out.append(block)
        elif is_terminal(block) or (held and block == COMMENT):
            held.append(block)
        else:
            out.append(block)
    return out


@pytest.mark.parametrize("path", PATHS)
async def test_keep_alive_comments_while_the_sidecar_holds_a_terminal_chunk(
    start_standin: Callable[..., Standin],
    start_sidecar: Callable[..., Sidecar],
    path: str,
) -> None:
    """n=2, choice 0 finishing at step 1, choice 1 at step 4, 150 ms idle before each step:
    on a fresh sidecar choice 0's terminal chunk is held for the usage chunk while vLLM
    sends more tokens and keep-alive comments. Every comment still reaches the client,
    those before the held chunk live and in place, those after it behind it."""
    standin = start_standin(sse_keep_alive_interval=0.05, ttft_ms=150, itl_ms=150, tokens=8)
    sidecar = start_sidecar(standin.url)  # fresh: its fingerprint memo is cold
    controls = {"x-standin-choice-tokens": "1,4"}
    body = request_body(path, None, n=2)
    request_id = rid()
    standin.reset()
    proxied = await stream(f"{sidecar.url}{path}", body, headers_for(request_id, **controls))
    sent = journal_entry(standin, request_id)
    direct = await stream(f"{standin.url}{path}", body, headers_for(request_id, **controls))

    blocks = proxied.blocks
    assert blocks.count(COMMENT) == sent["comments_sent"] >= 5  # none lost, none added
    # the data events are vLLM's, byte for byte (the fingerprint back on each terminal
    # chunk, the usage chunk the sidecar asked for gone) ...
    proxied_data = [b for b in blocks if b != COMMENT]
    assert sorted(proxied_data) == sorted(b for b in direct.blocks if b != COMMENT)
    # ... in vLLM's order but for the held terminal chunk, and the comments in their gaps
    assert runs(blocks) == runs(as_a_cold_sidecar_sends(direct.blocks))
    terminal = [b for b in proxied_data if is_terminal(b)]
    assert len(terminal) == 2 and all(b'"system_fingerprint":"' in b for b in terminal)
    # the comments of the wait for the first token were live
    assert blocks[0] == COMMENT
    assert proxied.read_of(COMMENT) < proxied.read_of(proxied_data[0])

    usage = await vllm_usage(standin, path, request_body(path, None, n=2), controls)
    record = check_record(sidecar, request_id, proxied, usage, None, sent)
    assert record["response"]["bytes"] == sent["response_bytes"]
