"""Item building is pure: placeholders, keys, previews, numbers, TTL, required fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from llm_audit.items import (
    UNKNOWN,
    AuditSource,
    InvalidRecord,
    ItemRules,
    as_number,
    build_item,
    cut,
    item_keys,
    normalise_label,
    number_attributes,
    parse_timestamp,
    prompt_text,
    response_text,
)
from tests.ingest.support import record

SOURCE = AuditSource("central-llm-audit", "logs/2026/11/26/batch.ndjson.gz", 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("   ", UNKNOWN),
        ("-", UNKNOWN),
        ("null", UNKNOWN),
        ("NULL", UNKNOWN),
        ("undefined", UNKNOWN),
        ("None", UNKNOWN),
        ("${LLM_USER}", UNKNOWN),
        ("<user>", UNKNOWN),
        ("{{ user }}", UNKNOWN),
        ({"a": 1}, UNKNOWN),
        (True, UNKNOWN),
        ("alice", "alice"),
        ("  alice ", "alice"),
        ("a-b", "a-b"),
        ("${partial", "${partial"),
        (42, "42"),
        ("x" * 300, "x" * 256),
        ("bad\ud800surrogate", "bad?surrogate"),
    ],
)
def test_normalise_label(raw: object, expected: str) -> None:
    assert normalise_label(raw) == expected


@pytest.mark.parametrize(
    ("project", "timestamp", "request_id", "expected"),
    [
        (
            "billing-app",
            "2026-11-26T20:19:11.123456Z",
            "req-1",
            {"id": "project#billing-app", "createdAt": "2026-11-26T20:19:11.123456Z#req-1"},
        ),
        (
            UNKNOWN,
            "2026-01-02T03:04:05.000006Z",
            "abc:def",
            {"id": "project#unknown", "createdAt": "2026-01-02T03:04:05.000006Z#abc:def"},
        ),
    ],
)
def test_item_keys(project: str, timestamp: str, request_id: str, expected: dict[str, str]) -> None:
    assert item_keys(project, timestamp, request_id) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-26T20:19:11.123456Z", "2026-11-26T20:19:11.123456Z"),
        ("2026-11-26T20:19:11Z", "2026-11-26T20:19:11.000000Z"),
        ("2026-11-26T21:19:11.5+01:00", "2026-11-26T20:19:11.500000Z"),
        ("2026-11-26T20:19:11.123456", "2026-11-26T20:19:11.123456Z"),
    ],
)
def test_timestamps_become_canonical_in_created_at(raw: str, expected: str) -> None:
    item = build_item(record(timestamp=raw), SOURCE, ItemRules())
    assert item["createdAt"] == f"{expected}#req-0001"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"requestId": None}, "requestId"),
        ({"requestId": ""}, "requestId"),
        ({"requestId": "has space"}, "requestId"),
        ({"requestId": "a#b"}, "requestId"),
        ({"requestId": "x" * 129}, "requestId"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1764188351}, "timestamp"),
    ],
)
def test_records_without_required_fields_are_refused(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRecord, match=message):
        build_item(record(**overrides), SOURCE, ItemRules())


def test_full_record_becomes_the_contract_item() -> None:
    item = build_item(record(), SOURCE, ItemRules(max_preview_chars=2048))
    assert item == {
        "id": "project#billing-app",
        "createdAt": "2026-11-26T20:19:11.123456Z#req-0001",
        "requestId": "req-0001",
        "projectId": "billing-app",
        "userId": "alice",
        "source": "billing-app",
        "requestType": "chat",
        "model": "qwen2.5-0.5b-instruct",
        "outcome": "completed",
        "statusCode": 200,
        "latencyMs": Decimal("812.305"),
        "ttftMs": Decimal("41.2"),
        "promptTokens": 12,
        "completionTokens": 40,
        "totalTokens": 52,
        "promptPreview": "And of Sweden?\nOne word.",
        "responsePreview": "Stockholm",
        "auditBucket": "central-llm-audit",
        "auditObjectKey": "logs/2026/11/26/batch.ndjson.gz",
        "auditLine": 3,
    }


def test_missing_optional_fields_default_to_unknown_or_are_left_out() -> None:
    bare = {"requestId": "r1", "timestamp": "2026-11-26T20:19:11.123456Z"}
    item = build_item(bare, SOURCE, ItemRules())
    assert item["id"] == "project#unknown"
    for label in ("projectId", "userId", "source", "requestType", "model", "outcome"):
        assert item[label] == UNKNOWN
    for number in ("statusCode", "latencyMs", "ttftMs", "totalTokens", "expiresAt"):
        assert number not in item  # sparse: absent, never NULL
    assert "promptPreview" not in item and "responsePreview" not in item


@pytest.mark.parametrize(
    ("overrides", "project"),
    [
        ({"projectId": "proj-x", "source": "app"}, "proj-x"),
        ({"projectId": "${PROJECT}", "source": "app"}, "app"),
        ({"source": "app"}, "billing-app"),
        ({"projectId": None, "source": "-"}, UNKNOWN),
    ],
)
def test_project_falls_back_to_source(overrides: dict[str, Any], project: str) -> None:
    item = build_item(record(**overrides), SOURCE, ItemRules())
    assert item["projectId"] == project
    assert item["id"] == f"project#{project}"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("hello", 10, "hello"),
        ("hello", 3, "hel"),
        ("héllo wörld", 4, "héll"),
        ("😀😀😀", 2, "😀😀"),
        ("", 5, ""),
    ],
)
def test_cut_counts_characters_not_bytes(text: str, limit: int, expected: str) -> None:
    assert cut(text, limit) == expected


def test_previews_are_cut_at_max_preview_chars() -> None:
    long_prompt = "é" * 5000
    rec = record(
        request={"body": {"messages": [{"role": "user", "content": long_prompt}]}},
        response={"choices": [{"index": 0, "content": "😀" * 3000}]},
    )
    item = build_item(rec, SOURCE, ItemRules(max_preview_chars=2048))
    assert item["promptPreview"] == "é" * 2048
    assert item["responsePreview"] == "😀" * 2048


@pytest.mark.parametrize(
    ("request_part", "expected"),
    [
        ({"body": {"messages": [{"role": "user", "content": "hi"}]}}, "hi"),
        ({"body": {"messages": [{"role": "system", "content": "sys"}]}}, None),
        ({"body": {"prompt": "complete me"}}, "complete me"),
        ({"body": {"prompt": ["first", "second"]}}, "first"),
        ({"body": {"input": "embed me"}}, "embed me"),
        ({"body": "raw text body"}, "raw text body"),
        ({"body": {"text": "tokenize"}}, '{"text": "tokenize"}'),
        ({"body": None}, None),
        (None, None),
    ],
)
def test_prompt_text(request_part: Any, expected: str | None) -> None:
    assert prompt_text({"request": request_part}) == expected


@pytest.mark.parametrize(
    ("response_part", "expected"),
    [
        ({"choices": [{"index": 0, "content": "streamed"}], "body": None}, "streamed"),
        ({"choices": [{"index": 0, "text": "completion stream"}]}, "completion stream"),
        ({"choices": [], "body": None}, None),
        ({"choices": None, "body": {"choices": [{"message": {"content": "plain"}}]}}, "plain"),
        ({"choices": None, "body": {"choices": [{"text": "completion"}]}}, "completion"),
        ({"choices": None, "body": "upstream said no"}, "upstream said no"),
        ({"choices": None, "body": {"error": {"message": "x"}}}, None),
        (None, None),
    ],
)
def test_response_text(response_part: Any, expected: str | None) -> None:
    assert response_text({"response": response_part}) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (200, 200),
        (Decimal("812.305"), Decimal("812.305")),
        (812.305, Decimal("812.305")),
        (Decimal("NaN"), "NaN"),
        (float("inf"), Decimal("Infinity")),
        (True, None),
        ("200", None),
        (None, None),
    ],
)
def test_as_number_takes_json_numbers_only(raw: object, expected: object) -> None:
    number = as_number(raw)
    if expected == "NaN":
        assert isinstance(number, Decimal) and number.is_nan()
    else:
        assert number == expected


MAX = Decimal("9.9999999999999999999999999999999999999E+125")
D39 = "123456789012345678901234567890123456789"  # 39 significant digits


@pytest.mark.parametrize(
    ("raw", "stored", "as_recorded"),
    [
        (200, 200, None),
        (Decimal("812.305"), Decimal("812.305"), None),
        (10**38 - 1, 10**38 - 1, None),
        (10**38, Decimal("1E+38"), None),
        (10**38 + 1, Decimal("1E+38"), str(10**38 + 1)),
        (Decimal("1.00000000000000000000000000000000000000000"), Decimal(1), None),
        (Decimal(f"1.{D39[1:]}"), Decimal(f"1.{D39[1:37]}9"), f"1.{D39[1:]}"),
        (Decimal("1E+200"), MAX, "1E+200"),
        (Decimal("-1E+200"), MAX.copy_negate(), "-1E+200"),
        (Decimal(f"9.{'9' * 38}E+125"), MAX, f"9.{'9' * 38}E+125"),
        (MAX, MAX, None),
        (Decimal("1E-200"), 0, "1E-200"),
        (Decimal("1E-130"), Decimal("1E-130"), None),
        (Decimal("1.5E-131"), 0, "1.5E-131"),
        (Decimal("-0.0"), 0, None),
        (Decimal("Infinity"), MAX, "Infinity"),
        (Decimal("-Infinity"), MAX.copy_negate(), "-Infinity"),
        (Decimal("NaN"), None, "NaN"),
        ("12", None, None),
        ([12], None, None),
    ],
)  # fmt: skip
def test_numbers_fit_dynamodb_by_one_rule(raw: object, stored: object, as_recorded: object) -> None:
    expected = {"latencyMs": stored, "latencyMsAsRecorded": as_recorded}
    attributes = number_attributes("latencyMs", raw)
    assert attributes == {k: v for k, v in expected.items() if v is not None}
    if "latencyMs" in attributes:  # boto3's serializer takes it as is (it traps any rounding)
        assert TypeSerializer().serialize(attributes["latencyMs"])["N"]


def test_ttl_counts_retention_from_the_request_time() -> None:
    item = build_item(record(), SOURCE, ItemRules(retention_days=30))
    start = parse_timestamp("2026-11-26T20:19:11.123456Z")
    assert item["expiresAt"] == int(start.timestamp()) + 30 * 86400
    assert datetime.fromtimestamp(item["expiresAt"], UTC).date().isoformat() == "2026-12-26"


def test_same_record_gives_the_same_item() -> None:
    assert build_item(record(), SOURCE, ItemRules(retention_days=7)) == build_item(
        record(), SOURCE, ItemRules(retention_days=7)
    )
