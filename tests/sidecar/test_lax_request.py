"""`stream`, `n` and `stream_options.include_usage`, read exactly as vLLM's models read them.

vLLM 0.33 declares `stream: bool | None`, `n: int | None` (chat; `int` for
completions) and `StreamOptions.include_usage: bool | None` on models validated in
pydantic's lax mode. `lax_bool`/`lax_int` are compared with pydantic itself over a
corpus of JSON values, so a pydantic that reads them differently fails here.
"""

from __future__ import annotations

import itertools

import orjson
import pytest

from sidecar_audit.json_body import set_member
from sidecar_audit.routing import (
    INVALID,
    lax_bool,
    lax_int,
    requested_n,
    usage_options_to_send,
    usage_requested,
    will_stream,
)

pydantic = pytest.importorskip("pydantic")

WORDS = ["true", "false", "yes", "no", "on", "off", "t", "f", "y", "n", "1", "0", "2", "-1"]
CORPUS: list[object] = [
    None, True, False, 0, 1, 2, -1, 10**30, 0.0, 1.0, 1.5, 2.0, -0.0, float("inf"),
    "", " ", "null", "none", "1.0", "01", "00", "1_0", "1__0", "_1", "+3", "-0", " 3 ",
    "3.0", "3.", "3.5", "1e1", "0x10", "tRuE", " true", "true ", "١", [], {}, [1], {"a": 1},
    "\u00a03", "\u20033\n", "1_0.0", "+_1", "1_", "1.0_0", " -3.000 ",
    9.2e18, 2.0**63, -(2.0**63), 1e19, float("nan"), -(10**30),
    "9" * 4300, "9" * 4301, "-" + "9" * 4301, "0" * 5000, "0" * 4400 + "1", "1_" * 3000 + "1",
    *WORDS, *(w.upper() for w in WORDS), *(w.title() for w in WORDS),
]  # fmt: skip


def short(value: object) -> str:
    return repr(value)[:40]


def with_usage_requested(path: str, body: dict[str, object]) -> bytes | None:
    """What the proxy sends: the client's bytes with the sidecar's stream_options appended."""
    options = usage_options_to_send(path, body)
    return None if options is None else set_member(orjson.dumps(body), "stream_options", options)


def pydantic_result(annotation: object, value: object) -> object:
    try:
        return pydantic.TypeAdapter(annotation).validate_python(value)
    except pydantic.ValidationError:
        return INVALID


@pytest.mark.parametrize("value", CORPUS, ids=short)
def test_lax_bool_is_pydantics(value: object) -> None:
    assert lax_bool(value) == pydantic_result(bool | None, value)


@pytest.mark.parametrize("value", CORPUS, ids=short)
def test_lax_int_is_pydantics(value: object) -> None:
    expected = pydantic_result(int | None, value)
    got = lax_int(value)
    assert got == expected and type(got) is type(expected)


def test_every_spelling_of_true_streams() -> None:
    for value in (True, 1, 1.0, "true", "True", "1", "yes", "on", "t", "y", "YES", "On"):
        assert will_stream("/v1/chat/completions", {"stream": value}), value
    for value in (False, 0, None, "false", "0", "no", "off", 2, "2", " true", "maybe", []):
        assert not will_stream("/v1/chat/completions", {"stream": value}), value
    assert will_stream("/v1/messages", {"stream": "yes"})
    assert will_stream("/v1/responses", {"stream": 1})
    assert not will_stream("/v1/embeddings", {"stream": True})


@pytest.mark.parametrize(
    ("stream", "options"),
    list(itertools.product([True, 1, "true", "yes", 1.0], [None, {}, {"include_usage": False},
                                                           {"include_usage": "no"},
                                                           {"include_usage": None}])),
)  # fmt: skip
def test_usage_injected_for_anything_vllm_streams(stream: object, options: object) -> None:
    body: dict[str, object] = {"model": "m", "messages": [], "stream": stream}
    if options is not None:
        body["stream_options"] = options
    for path in ("/v1/chat/completions", "/v1/completions"):
        rewritten = with_usage_requested(path, body)
        assert rewritten is not None
        sent = orjson.loads(rewritten)
        assert sent["stream_options"]["include_usage"] is True
        assert sent["stream"] == stream  # everything else as the client sent it


@pytest.mark.parametrize("include", [True, 1, 1.0, "true", "1", "yes", "on", "t", "y", "TRUE"])
def test_usage_the_client_asked_for_is_never_touched(include: object) -> None:
    body = {"stream": "true", "stream_options": {"include_usage": include}}
    assert usage_requested(body) is True
    assert with_usage_requested("/v1/chat/completions", body) is None


@pytest.mark.parametrize(
    "body",
    [
        {"stream": True, "stream_options": {"include_usage": "maybe"}},  # vLLM's 400
        {"stream": True, "stream_options": {"include_usage": 2}},
        {"stream": True, "stream_options": "yes"},
        {"stream": True, "stream_options": {"continuous_usage_stats": "x"}},
        {"stream": "maybe"},
        {"stream": False},
        {"stream": "off"},
    ],
)
def test_left_alone(body: dict[str, object]) -> None:
    assert with_usage_requested("/v1/chat/completions", body) is None


def test_continuous_stats_stay_off_when_the_client_did_not_ask_for_usage() -> None:
    body = {"stream": 1, "stream_options": {"include_usage": "false", "continuous_usage_stats": 1}}
    sent = orjson.loads(with_usage_requested("/v1/completions", body) or b"")
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}


def test_responses_and_messages_have_no_stream_options() -> None:
    for path in ("/v1/responses", "/v1/messages"):
        assert with_usage_requested(path, {"stream": True}) is None


@pytest.mark.parametrize(
    ("path", "body", "n"),
    [
        ("/v1/chat/completions", {}, 1),
        ("/v1/chat/completions", {"n": "3"}, 3),
        ("/v1/chat/completions", {"n": 2.0}, 2),
        ("/v1/chat/completions", {"n": None}, 1),
        ("/v1/completions", {"n": None}, None),  # completions: `n: int`
        ("/v1/completions", {"n": " 4 "}, 4),
        ("/v1/chat/completions", {"n": 1.5}, None),
        ("/v1/chat/completions", {"n": True}, 1),
    ],
)
def test_requested_n(path: str, body: dict[str, object], n: int | None) -> None:
    assert requested_n(path, body) == n
