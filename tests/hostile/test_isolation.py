"""Tenant isolation under hostile clients: no answer ever reaches another client or record.

The wave-1 breach: clients on keep-alive connections send a request and hang up
0–4 ms later (RST or FIN); the answer that arrived for the vanished client was
left in the pooled upstream connection and the next request on it received it.
Here 4,000 requests (chat streamed and not, completions, /tokenize) run over
64 keep-alive connections to the real sidecar process in front of the vLLM
stand-in, a quarter of them aborted at a random instant, and every answer and
every record is checked to be its own:

- a client's answer carries its own marker (`chatcmpl-<marker>` / `cmpl-<marker>`
  in every JSON object of it; /tokenize's tokens equal vLLM's for its own
  prompt);
- every answered request has a record whose response digest is the digest of
  the bytes that client received, and whose request is its own;
- no record, aborted ones included, holds another request's answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.hostile.client import MODEL, Reply, read_reply

pytestmark = pytest.mark.timeout(240)

TOTAL = 4000
WORKERS = 64
ABORT_SHARE = 0.25


@dataclass
class Sent:
    marker: str
    kind: str
    body: bytes
    aborted: bool = False
    reply: Reply | None = None


@dataclass
class Tally:
    sent: list[Sent] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)


def make_request(marker: str, kind: str) -> tuple[str, bytes]:
    if kind == "tokenize":
        body = {"model": MODEL, "prompt": f"tokenize {marker} please"}
        return "/tokenize", orjson.dumps(body)
    if kind == "completion":
        body = {"model": MODEL, "prompt": f"say {marker}", "max_tokens": 8, "request_id": marker}
        return "/v1/completions", orjson.dumps(body)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"hello {marker}"}],
        "max_tokens": 12,
        "request_id": marker,
    }
    if kind == "stream":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # nothing stripped: digests compare
    return "/v1/chat/completions", orjson.dumps(body)


def wire(path: str, body: bytes, marker: str, port: int) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Request-Id: {marker}\r\n"
        "x-llm-source: hostile\r\nx-llm-user: u-{m}\r\nx-llm-request-type: chat\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).replace("{m}", marker)
    return head.encode() + body


def own_answer(sent: Sent, body: bytes) -> bool:
    """Every JSON object in the answer names this request (chat and completions)."""
    prefix = "chatcmpl-" if sent.kind in ("chat", "stream") else "cmpl-"
    if sent.kind == "stream":
        payloads = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: {")]
    else:
        payloads = [body]
    try:
        ids = {orjson.loads(p).get("id") for p in payloads}
    except orjson.JSONDecodeError:  # e.g. another answer's bytes glued in front of this one
        return False
    return ids == {f"{prefix}{sent.marker}"}


async def worker(port: int, plan: list[Sent], tally: Tally, rng: random.Random) -> None:
    reader = writer = None
    for sent in plan:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path, _ = make_request(sent.marker, sent.kind)
        writer.write(wire(path, sent.body, sent.marker, port))
        if sent.aborted:
            await asyncio.sleep(rng.uniform(0, 0.004))
            sock = writer.get_extra_info("socket")
            if rng.random() < 0.5 and sock is not None:  # RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            reader = writer = None
            continue
        sent.reply = await read_reply(reader)
        if not sent.reply.keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def test_no_answer_crosses_clients_under_aborts_at_random_instants(
    start_standin, start_sidecar
) -> None:
    # Answers in ~1-3 ms: the aborts (0-4 ms after sending) land around the instant the
    # whole answer is back from vLLM, which is where the wave-1 leak lived.
    standin = start_standin(ttft_ms=1, itl_ms=0.2, tokens=6)
    sidecar = start_sidecar(standin.url, UPSTREAM_KEEPALIVE_S="4")
    port = int(sidecar.url.rsplit(":", 1)[1])
    rng = random.Random(20261128)
    kinds = ["chat"] * 40 + ["stream"] * 30 + ["completion"] * 15 + ["tokenize"] * 15
    tally = Tally()
    for i in range(TOTAL):
        marker = f"iso{i:05d}x{rng.randrange(16**8):08x}"
        kind = rng.choice(kinds)
        _, body = make_request(marker, kind)
        tally.sent.append(Sent(marker, kind, body, aborted=rng.random() < ABORT_SHARE))
    plans = [tally.sent[w::WORKERS] for w in range(WORKERS)]
    await asyncio.gather(
        *(worker(port, plan, tally, random.Random(w)) for w, plan in enumerate(plans))
    )

    answered = [s for s in tally.sent if s.reply is not None]
    assert len(answered) >= TOTAL * (1 - ABORT_SHARE) * 0.9
    tokenize_direct = await direct_tokenize(standin.url, answered)
    crossed = []
    for sent in answered:
        reply = sent.reply
        assert reply is not None
        if reply.status != 200:
            crossed.append(f"{sent.marker}: status {reply.status}")
        elif sent.kind == "tokenize":
            if reply.body != tokenize_direct[sent.marker]:
                crossed.append(f"{sent.marker}: tokenize answer is not its own")
        elif not own_answer(sent, reply.body):
            crossed.append(f"{sent.marker}: received another request's answer")
    assert crossed == [], crossed[:10]

    # Records: every answered request's record holds exactly what its client got.
    audit = sidecar.wait_for_records([s.marker for s in answered], timeout=60)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in audit.records:
        by_id.setdefault(record["requestId"], []).append(record)
    wrong = []
    for sent in answered:
        [record] = by_id[sent.marker]
        assert sent.reply is not None
        if record["response"]["sha256"] != hashlib.sha256(sent.reply.body).hexdigest():
            wrong.append(f"{sent.marker}: record digest is not the client's answer")
        if record["request"]["sha256"] != hashlib.sha256(sent.body).hexdigest():
            wrong.append(f"{sent.marker}: record holds another request")
        if record["outcome"] != "completed":
            wrong.append(f"{sent.marker}: outcome {record['outcome']}")
    # Aborted requests that reached the sidecar: one record each, never someone else's answer.
    sent_by_marker = {s.marker: s for s in tally.sent}
    for marker, records in by_id.items():
        assert len(records) == 1, f"{marker}: {len(records)} records"
        record, sent = records[0], sent_by_marker[marker]
        body = record["response"].get("body")
        if isinstance(body, dict) and "id" in body and not own_answer(sent, orjson.dumps(body)):
            wrong.append(f"{marker}: record holds another request's answer")
        if sent.aborted:
            assert record["outcome"] in ("client_disconnected", "completed"), record["outcome"]
    assert wrong == [], wrong[:10]


async def direct_tokenize(url: str, answered: list[Sent]) -> dict[str, Any]:
    """vLLM's (the stand-in's) own answer for each /tokenize prompt, asked directly."""
    import aiohttp

    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for sent in answered:
            if sent.kind == "tokenize":
                headers = {"content-type": "application/json"}
                async with session.post(
                    f"{url}/tokenize", data=sent.body, headers=headers
                ) as response:
                    out[sent.marker] = await response.read()
    return out
