"""The sidecar reads a request body the way vLLM reads it, or refuses it: no prompt or usage hides.

vLLM parses every request body with Starlette's `json.loads(body_bytes)`: it
ignores `Content-Encoding` (nothing in vLLM or uvicorn decodes request bodies)
and accepts what Python's JSON module accepts beyond RFC 8259 — a UTF-8 BOM,
UTF-16/32, `NaN`/`Infinity`, lone surrogate escapes. The stand-in does the same
(`vllm_standin/bodies.decode_json`). A body vLLM executes must therefore be one
whose prompt the record holds and, when vLLM streams it, whose usage the
sidecar asked for; a body the sidecar cannot read that way must be refused, not
served unaccounted.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from tests.hostile.client import MODEL, Reply
from tests.hostile.test_bad_input import audit, one_record, send

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sidecar(standin_session, start_sidecar):  # type: ignore[no-untyped-def]
    return start_sidecar(standin_session.url)


def streamed_chat(marker: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"prompt {marker}"}],
        "max_tokens": 4,
        "stream": True,
        **extra,
    }


def served_stream(reply: Reply) -> bool:
    return reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("coding", ["identity", "gzip", "br", "x-made-up"])
async def test_a_plain_body_under_any_content_encoding_is_audited_as_vllm_read_it(
    sidecar, coding: str
) -> None:
    """vLLM never undoes Content-Encoding: it runs the plain JSON whatever the label says."""
    request_id = f"ce-{uuid.uuid4().hex[:16]}"
    body = orjson.dumps(streamed_chat(request_id))
    reply = await send(
        sidecar.url,
        "/v1/chat/completions",
        body,
        audit(request_id, {"content-encoding": coding}),
    )
    assert served_stream(reply), reply.status  # vLLM (the stand-in) ran it
    record = one_record(sidecar, request_id)
    assert f"prompt {request_id}" in orjson.dumps(record["request"]["body"]).decode()
    assert record["usage"] is not None, "a streamed answer without its token count"


def _python_only_json(marker: str) -> dict[str, bytes]:
    """Bodies Python's json.loads(bytes) accepts and RFC 8259 parsers refuse."""
    plain = orjson.dumps(streamed_chat(marker))
    extra = plain[:-1] + b',"metadata_x":%b}'
    return {
        "utf8-bom": b"\xef\xbb\xbf" + plain,
        "utf16": plain.decode().encode("utf-16"),
        "nan": extra % b"NaN",
        "infinity": extra % b"-Infinity",
        "lone-surrogate": extra % b'"\\ud800"',
    }


@pytest.mark.parametrize("shape", sorted(_python_only_json("x")))
async def test_json_only_python_accepts_is_never_streamed_without_usage(
    sidecar, standin_session, shape: str
) -> None:
    request_id = f"py-{uuid.uuid4().hex[:16]}"
    body = _python_only_json(request_id)[shape]
    reply = await send(sidecar.url, "/v1/chat/completions", body, audit(request_id))
    record = one_record(sidecar, request_id)
    assert record["statusCode"] == reply.status
    if served_stream(reply):
        assert record["usage"] is not None, "vLLM streamed it; the record has no token count"
    else:  # refused: by the sidecar, before vLLM ran anything
        assert reply.status == 400
        assert record["outcome"] == "rejected"
        assert not [
            r
            for r in standin_session.requests()
            if {k.lower(): v for k, v in r["headers"].items()}.get("x-request-id") == request_id
        ]


async def test_usage_the_client_asked_for_is_kept_however_large_its_stream_options(
    sidecar,
) -> None:
    """A stream_options member over json_body.MAX_MEMBER_BYTES was read as absent: the
    sidecar then asked for usage itself and stripped the usage chunk the client wanted."""
    request_id = f"so-{uuid.uuid4().hex[:16]}"
    options = {"include_usage": True, "padding": "x" * 70_000}
    body = orjson.dumps(streamed_chat(request_id, stream_options=options))
    reply = await send(sidecar.url, "/v1/chat/completions", body, audit(request_id))
    assert served_stream(reply)
    events = [line[6:] for line in reply.body.split(b"\n") if line.startswith(b"data: {")]
    assert any(orjson.loads(e).get("usage") for e in events), "the asked-for usage was stripped"
    record = one_record(sidecar, request_id)
    assert record["usage"] is not None
    assert not record["request"].get("usageRequestedBySidecar")
