"""Table-driven tests of the pure rules: headers, request ids, routing, usage request, config."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import orjson
import pytest

from sidecar_audit.config import SETTINGS, Config, ConfigError, describe_settings
from sidecar_audit.headers import (
    REDACTED,
    IdentityProblem,
    Redaction,
    choose_request_id,
    client_response_headers,
    read_identity,
    recorded_headers,
    recorded_query,
    upstream_request_headers,
)
from sidecar_audit.json_body import set_member
from sidecar_audit.record import BodyFacts, attribution, body_view, iso_utc, usage_view
from sidecar_audit.routing import path_allowed, usage_options_to_send

ALLOWED = ("/v1/*", "/tokenize", "/detokenize", "/version")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/chat/completions", True),
        ("/v1/models", True),
        ("/v1/completions?x=1", True),
        ("/tokenize", True),
        ("/version", True),
        ("/health", False),
        ("/metrics", False),
        ("/invocations", False),
        ("/load", False),
        ("/reset_prefix_cache", False),
        ("/v1", False),
        ("/tokenize/extra", False),
        ("/v1/../metrics", False),
        ("/v1/%2e%2e/metrics", False),
        ("/v1/%2E%2E/invocations", False),
        ("/v1/./models", False),
        ("/v1/models%00", False),
        ("/%76%31/models", True),  # percent-encoded "v1" is still /v1/models to vLLM
    ],
)
def test_path_allowlist(path: str, allowed: bool) -> None:
    assert path_allowed(path, ALLOWED) is allowed


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123_X.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-leading-dash", False),
        ("has space", False),
        ("has#hash", False),
        ("slash/in/id", False),
        ("ünï", False),
        ("../../etc", False),
        (None, False),
    ],
)
def test_request_id_choice(incoming: str | None, kept: bool) -> None:
    chosen = choose_request_id(incoming)
    assert (chosen == incoming) is kept
    assert 1 <= len(chosen) <= 128


def test_generated_request_ids_are_unique() -> None:
    assert len({choose_request_id(None) for _ in range(1000)}) == 1000


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    incoming = [
        ("Host", "sidecar:8000"),
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Custom-Hop", "1"),
        ("Content-Length", "12"),
        ("X-Request-Id", "client-id"),
        ("Authorization", "Bearer sk-secret"),
        ("Content-Type", "application/json"),
        ("X-LLM-User", "alice"),
    ]
    assert upstream_request_headers(incoming, "rid-1") == [
        ("Authorization", "Bearer sk-secret"),
        ("Content-Type", "application/json"),
        ("X-LLM-User", "alice"),
        ("X-Request-Id", "rid-1"),
    ]
    downstream = client_response_headers(
        [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("server", "uvicorn"),
            ("x-request-id", "other"),
        ],
        "rid-1",
    )
    assert downstream == [
        ("content-type", "text/event-stream"),
        ("server", "uvicorn"),
        ("X-Request-Id", "rid-1"),
    ]


def test_recorded_headers_redact_and_join() -> None:
    redact = Redaction({"authorization", "cookie", "x-api-key", "x-extra-secret"}, ())
    recorded = recorded_headers(
        [
            ("Authorization", "Bearer sk-1"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Api-Key", "k"),
            ("X-Extra-Secret", "s"),
            ("Accept", "a"),
            ("Accept", "b"),
        ],
        redact,
    )
    assert recorded == {
        "authorization": REDACTED,
        "cookie": f"{REDACTED}, {REDACTED}",
        "x-api-key": REDACTED,
        "x-extra-secret": REDACTED,
        "accept": "a, b",
    }


def test_secret_names_are_redacted_by_pattern_in_headers_and_query() -> None:
    redaction = Redaction({"authorization"}, ("auth", "token", "key", "secret", "session"))
    recorded = recorded_headers(
        [
            ("api_key", "sk-1"),
            ("X-Auth-Token", "t"),
            ("OpenAI-Api-Key", "k"),
            ("X-Session-Id", "s"),
            ("X-LLM-User", "\u00c3\u00a5lice"),  # UTF-8 bytes of "ålice", as latin-1 text
            ("Accept", "*/*"),
        ],
        redaction,
    )
    assert recorded == {
        "api_key": REDACTED,
        "x-auth-token": REDACTED,
        "openai-api-key": REDACTED,
        "x-session-id": REDACTED,
        "x-llm-user": "ålice",
        "accept": "*/*",
    }
    query = recorded_query("api_key=sk-1&q=a%20b&access_token=t", redaction)
    assert "sk-1" not in query and "=t" not in query and "q=a%20b" in query
    assert recorded_query("q=1&x=2", redaction) == "q=1&x=2"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([(b"x-llm-source", b"a"), (b"x-llm-user", b"u"), (b"x-llm-request-type", b"c")], None),
        ([(b"x-llm-user", b"u"), (b"x-llm-request-type", b"c")], ("x-llm-source", "missing")),
        (
            [(b"x-llm-source", b"a"), (b"x-llm-user", b"alice"), (b"X-LLM-User", b"bob")],
            ("x-llm-user", "repeated"),
        ),
        ([(b"x-llm-source", b"\xff")], ("x-llm-source", "invalid")),
        ([(b"x-llm-source", b"a" * 300)], ("x-llm-source", "invalid")),
        ([(b"x-llm-source", b"a\x01b")], ("x-llm-source", "invalid")),
    ],
)
def test_identity_headers_are_once_utf8_and_bounded(raw, problem) -> None:
    if problem is None:
        assert read_identity(raw, required=True)["x-llm-source"] == "a"
        return
    with pytest.raises(IdentityProblem) as caught:
        read_identity(raw, required=True)
    assert (caught.value.header, caught.value.kind) == problem


@pytest.mark.parametrize(
    "value",
    [
        "ali\u0085ce",  # C1 control (NEL; at either end, strip() would drop it)
        "\u009bx",  # C1 CSI: a terminal escape once printed
        "admin\u202egnp.exe",  # right-to-left override: shows as "adminexe.png"
        "bob\u2066x\u2069",  # directional isolates
        "\u202aeve",  # left-to-right embedding
        "alice\u2028level=admin",  # a line separator: a new line to some log viewers
    ],
)
def test_identity_values_that_would_display_as_someone_else_are_refused(value: str) -> None:
    """A reviewer reads `userId` on a screen: bidirectional overrides and C1 controls
    would make one caller's value display as another's, as ASCII controls would."""
    with pytest.raises(IdentityProblem) as caught:
        read_identity([(b"x-llm-user", value.encode())], required=False)
    assert caught.value.kind == "invalid"


@pytest.mark.parametrize(
    "value",
    [
        "\u0645\u062d\u0645\u062f\u200f",  # Arabic with a right-to-left mark
        "\u0915\u094d\u200d\u0937",  # Devanagari with a zero-width joiner
        "\U0001f469\u200d\U0001f4bb",  # an emoji ZWJ sequence
        "z\u00fcrich-team",
    ],
)
def test_identity_values_in_any_script_are_accepted(value: str) -> None:
    assert read_identity([(b"x-llm-user", value.encode())], required=False) == {"x-llm-user": value}


def test_identity_headers_decode_utf8() -> None:
    raw = [(b"x-llm-user", "ålice".encode()), (b"x-llm-source", b" app ")]
    assert read_identity(raw, required=False) == {"x-llm-user": "ålice", "x-llm-source": "app"}


@pytest.mark.parametrize(
    ("headers", "missing"),
    [
        ({"x-llm-source": "a", "x-llm-user": "u", "x-llm-request-type": "chat"}, None),
        ({"x-llm-user": "u", "x-llm-request-type": "chat"}, "x-llm-source"),
        ({"x-llm-source": "a", "x-llm-user": " ", "x-llm-request-type": "chat"}, "x-llm-user"),
        ({"x-llm-source": "a", "x-llm-user": "u"}, "x-llm-request-type"),
    ],
)
def test_missing_audit_header(headers: dict[str, str], missing: str | None) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    if missing is None:
        read_identity(raw, required=True)
        return
    with pytest.raises(IdentityProblem) as caught:
        read_identity(raw, required=True)
    assert (caught.value.header, caught.value.kind) == (missing, "missing")


def test_attribution_defaults() -> None:
    assert attribution({"x-llm-source": "app", "x-llm-user": "u"}) == {
        "source": "app",
        "userId": "u",
        "requestType": "unknown",
        "projectId": "app",
    }
    assert attribution({"x-llm-source": "app", "x-llm-project": "p"})["projectId"] == "p"


@pytest.mark.parametrize(
    ("path", "body", "expected_options"),
    [
        ("/v1/chat/completions", {"stream": True}, {"include_usage": True}),
        (
            "/v1/completions",
            {"stream": True, "stream_options": {"include_usage": False}},
            {"include_usage": True},
        ),
        (
            "/v1/chat/completions",
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            {"continuous_usage_stats": False, "include_usage": True},
        ),
        ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}, None),
        ("/v1/chat/completions", {"stream": False}, None),
        ("/v1/chat/completions", {}, None),
        ("/v1/embeddings", {"stream": True}, None),
        ("/v1/chat/completions", {"stream": True, "stream_options": "bad"}, None),
        ("/v1/chat/completions", None, None),
    ],
)
def test_usage_request(path: str, body: dict | None, expected_options: dict | None) -> None:
    assert usage_options_to_send(path, body) == expected_options


def test_usage_request_keeps_the_rest_of_the_body_exact() -> None:
    body = {
        "model": "m",
        "stream": True,
        "temperature": 0.1,
        "messages": [{"role": "user", "content": "ü ✓"}],
        "n": 2,
    }
    wire = orjson.dumps(body)
    options = usage_options_to_send("/v1/chat/completions", body)
    out = set_member(wire, "stream_options", options)
    assert out.startswith(wire[:-1])  # the client's bytes, unchanged, then the new member
    assert orjson.loads(out) == {**body, "stream_options": {"include_usage": True}}


def test_usage_request_overrides_an_earlier_stream_options_for_pythons_json() -> None:
    import json

    wire = b'{"stream": true, "stream_options": {"include_usage": false}, "model": "m"}'
    out = set_member(wire, "stream_options", {"include_usage": True})
    # vLLM (FastAPI) parses with Python's json: the last duplicate wins.
    assert json.loads(out)["stream_options"] == {"include_usage": True}


def facts(
    body: bytes,
    limit: int = 1000,
    ctype: str | None = "application/json",
    encoding: str | None = None,
) -> dict:
    view = body_view(
        BodyFacts(body[:limit], len(body), hashlib.sha256(body).hexdigest(), ctype, encoding), limit
    )
    # As the record is stored: a JSON body is embedded verbatim (orjson.Fragment).
    return orjson.loads(orjson.dumps(view))


def test_body_view_json_text_truncated_and_compressed() -> None:
    assert facts(b'{"a": 1}')["body"] == {"a": 1}
    assert facts(b"{not json")["body"] == "{not json"
    assert facts(b"plain", ctype="text/plain")["body"] == "plain"
    assert facts(b"")["body"] is None
    big = b'{"x": "' + b"y" * 2000 + b'"}'
    view = facts(big, limit=100)
    assert view == {
        "body": big[:100].decode(),
        "bytes": len(big),
        "sha256": hashlib.sha256(big).hexdigest(),
        "truncated": True,
    }
    zipped = gzip.compress(b'{"ok": true}')
    assert facts(zipped, encoding="gzip")["body"] == {"ok": True}
    assert facts(zipped, encoding="br")["body"] is None
    assert facts(b"\xff\xfe bad utf8", ctype="text/plain")["body"] == "\ufffd\ufffd bad utf8"


def test_usage_view() -> None:
    assert usage_view({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == {
        "promptTokens": 3,
        "completionTokens": 4,
        "totalTokens": 7,
    }
    assert usage_view({"prompt_tokens": 3, "completion_tokens": 4}) == {
        "promptTokens": 3,
        "completionTokens": 4,
        "totalTokens": 7,
    }
    assert usage_view(None) is None
    assert usage_view({"prompt_tokens": "3"}) is None


def test_iso_utc() -> None:
    assert iso_utc(1764188351.123456) == "2025-11-26T20:19:11.123456Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"


def test_config_defaults_and_errors() -> None:
    config = Config.from_env({})
    assert config.listen_port == 8000
    assert config.upstream_url == "http://127.0.0.1:8001"
    assert config.audit_bucket == "central-llm-audit"
    assert config.audit_prefix == "logs"
    assert "authorization" in config.redacted_headers
    bad = {
        "LISTEN_PORT": "80000",
        "UPSTREAM_URL": "ftp://x",
        "UPSTREAM_READ_TIMEOUT_S": "0",
        "AUDIT_SPOOL_FULL_POLICY": "maybe",
        "REQUIRE_AUDIT_HEADERS": "perhaps",
        "ALLOWED_PATHS": "v1/*",
        "AUDIT_BUCKET": "Bad_Bucket",
        "REDACT_HEADERS": "x y",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=name):
            Config.from_env({name: value})
    extra = Config.from_env({"REDACT_HEADERS": "X-Secret, x-other"})
    assert {"x-secret", "x-other"} <= extra.redacted_headers


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert describe_settings() in readme, "regenerate the table: python -m sidecar_audit --settings"
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)


def test_multipart_audio_upload_keeps_fields_not_audio() -> None:
    audio = bytes(range(256)) * 40
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nMeeting notes \xc3\xbc\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--XyZ--\r\n"
    )
    ctype = "multipart/form-data; boundary=XyZ"
    view = facts(body, limit=100_000, ctype=ctype)
    assert view["body"] == {
        "multipart": [
            {"name": "model", "value": "whisper"},
            {"name": "prompt", "value": "Meeting notes ü"},
            {"name": "file", "filename": "a.wav", "contentType": "audio/wav", "bytes": len(audio)},
        ]
    }
    cut_view = facts(body, limit=300, ctype=ctype)
    assert cut_view["truncated"] is True
    parts = cut_view["body"]["multipart"]
    assert parts[2]["incomplete"] is True and parts[2]["bytes"] < len(audio)
    assert facts(audio, ctype="audio/wav")["body"] is None
    assert facts(b"a=1&b=2", ctype="application/x-www-form-urlencoded")["body"] == "a=1&b=2"


@pytest.mark.parametrize(
    "fragments", [(), ("",), ("a.b", "(x", "c+", "[k]", "\\d"), ("KEY", "tok")]
)
def test_a_pattern_is_a_plain_substring_never_a_regular_expression(fragments: tuple) -> None:
    redaction = Redaction({"authorization"}, fragments)
    names = ["a.b", "axb", "(x-y", "x", "cc+", "ccc", "[k]", "k", "\\d", "9", "api-key", "tokens"]
    for name in names:
        expected = name == "authorization" or any(f.lower() in name for f in fragments)
        assert redaction.secret(name) is expected, (fragments, name)
