"""Event parsing and object decoding are pure: every delivered shape, every key encoding."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import pytest

from llm_audit.events import ObjectRef, UnknownEvent, objects_in, parse_event
from llm_audit.lines import content, split_lines
from llm_audit.objects import (
    Limits,
    ObjectTooLarge,
    UnreadableObject,
    decode_object,
    is_audit_key,
)
from tests.ingest.support import batch_body, load_event, record

KEY = "logs/2026/11/26/0192f3a4-batch.ndjson.gz"


def test_s3_event_is_one_unit_with_the_decoded_key() -> None:
    parsed = parse_event(load_event("s3_put.json", bucket="b", key=KEY), "logs")
    assert parsed.source == "s3"
    assert [u.objects for u in parsed.units] == [(ObjectRef("b", KEY),)]


def test_encoded_key_is_decoded_once() -> None:
    parsed = parse_event(load_event("s3_put_encoded_key.json", bucket="b"), "logs")
    assert parsed.units[0].objects == (ObjectRef("b", "logs/2026/11/26/team a+b été.json"),)


@pytest.mark.parametrize(
    ("wire_key", "key"),
    [
        ("logs/2026/11/26/a+b.json", "logs/2026/11/26/a b.json"),
        ("logs/2026/11/26/a%2Bb.json", "logs/2026/11/26/a+b.json"),
        ("logs%2F2026%2F11%2F26%2Fx.ndjson.gz", "logs/2026/11/26/x.ndjson.gz"),  # moto's form
        ("logs/2026/11/26/100%25.json", "logs/2026/11/26/100%.json"),
    ],
)
def test_key_decoding_table(wire_key: str, key: str) -> None:
    event = load_event("s3_put.json", bucket="b", key="placeholder")
    event["Records"][0]["s3"]["object"]["key"] = wire_key
    assert parse_event(event, "logs").units[0].objects == (ObjectRef("b", key),)


@pytest.mark.parametrize(
    "key",
    [
        "other/2026/11/26/x.json",
        "logs-old/2026/11/26/x.json",
        "logs/2026/11/26/x.ndjson",
        "logs/2026/11/26/x.txt",
        "logs/",
    ],
)
def test_non_audit_keys_are_skipped_not_failed(key: str) -> None:
    unit = parse_event(load_event("s3_put.json", bucket="b", key=key), "logs").units[0]
    assert (unit.objects, unit.skipped, unit.error) == ((), 1, None)


def test_object_removed_events_are_skipped() -> None:
    event = load_event("s3_put.json", bucket="b", key=KEY)
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert parse_event(event, "logs").units[0].skipped == 1


def test_test_event_is_skipped_directly_and_in_a_message() -> None:
    direct = parse_event(load_event("s3_test_event.json", bucket="b"), "logs")
    assert direct.units[0].skipped == 1 and not direct.units[0].objects
    assert objects_in(load_event("s3_test_event.json", bucket="b"), "logs") == ([], 1)


def test_sqs_event_is_one_unit_per_message() -> None:
    event = load_event(
        "sqs_s3_notifications.json", bucket="b", key_good=KEY, key_poisoned="logs/p.json"
    )
    parsed = parse_event(event, "logs")
    assert parsed.source == "sqs"
    assert [(u.unit_id, u.objects, u.skipped) for u in parsed.units] == [
        ("0f9a3a4e-8a6f-4c0e-9a51-000000000001", (ObjectRef("b", KEY),), 0),
        ("0f9a3a4e-8a6f-4c0e-9a51-000000000002", (ObjectRef("b", "logs/p.json"),), 0),
        ("0f9a3a4e-8a6f-4c0e-9a51-000000000003", (), 1),
    ]


def test_sns_and_lambda_destination_envelopes_are_unwrapped() -> None:
    notification = load_event("s3_put.json", bucket="b", key=KEY)
    sns = {"Type": "Notification", "Message": json.dumps(notification)}
    destination = {
        "requestContext": {"condition": "RetriesExhausted"},
        "requestPayload": notification,
    }
    for body in (sns, destination):
        assert objects_in(body, "logs") == ([ObjectRef("b", KEY)], 0)


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"Records": "x"}', '{"no": "records"}'])
def test_unreadable_message_fails_only_its_unit(body: str) -> None:
    event = load_event(
        "sqs_s3_notifications.json", bucket="b", key_good=KEY, key_poisoned="logs/p.json"
    )
    event["Records"][1]["body"] = body
    units = parse_event(event, "logs").units
    assert units[1].error is not None
    assert units[0].error is None and units[0].objects


def test_versioned_object_keeps_its_version() -> None:
    event = load_event("s3_put.json", bucket="b", key=KEY)
    event["Records"][0]["s3"]["object"]["versionId"] = "3HL4kqtJlcpXroDTDmJ"
    assert parse_event(event, "logs").units[0].objects[0].version_id == "3HL4kqtJlcpXroDTDmJ"


@pytest.mark.parametrize(
    "event", [{}, {"Records": []}, {"Records": [{"eventSource": "aws:kinesis"}]}]
)
def test_unknown_events_are_refused(event: dict[str, object]) -> None:
    with pytest.raises(UnknownEvent):
        parse_event(event, "logs")


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("logs/2026/11/26/a.json", "logs", True),
        ("logs/2026/11/26/a.ndjson.gz", "logs/", True),
        ("audit/logs/a.json", "logs", False),
        ("anything/a.json", "", True),
    ],
)
def test_is_audit_key(key: str, prefix: str, expected: bool) -> None:
    assert is_audit_key(key, prefix) is expected


def test_batch_lines_are_numbered_from_zero_and_poison_is_isolated() -> None:
    body = batch_body([record(requestId="a"), b"{not json", b"[1]", record(requestId="b")])
    lines = decode_object(KEY, body)
    assert [(d.line, d.record is not None) for d in lines] == [
        (0, True),
        (1, False),
        (2, False),
        (3, True),
    ]
    assert "column" in (lines[1].error or "")
    assert "not an object" in (lines[2].error or "")
    assert "{not json" not in (lines[1].error or "")  # reasons never carry content


def test_batch_numbers_are_exact_decimals_and_nan_stays_a_number() -> None:
    """NaN no longer poisons its whole record: items.py leaves it out of the item."""
    body = gzip.compress(
        b'{"requestId": "a", "latencyMs": 1.5}\n{"latencyMs": NaN, "ttftMs": -Infinity}\n'
        b'{"n": 1' + b"0" * 5000 + b', "m": 1e-99999999999999999999}\n'
    )
    lines = decode_object(KEY, body)
    assert repr(lines[0].record and lines[0].record["latencyMs"]) == "Decimal('1.5')"
    assert lines[1].record is not None
    assert lines[1].record["latencyMs"].is_nan()
    assert lines[1].record["ttftMs"] == Decimal("-Infinity")
    assert lines[2].record == {"n": Decimal("1" + "0" * 5000), "m": 0}


def test_lines_over_the_cap_are_reported_and_their_neighbours_kept() -> None:
    body = batch_body([record(requestId="a"), record(requestId="b" * 100), record(requestId="c")])
    small = len(json.dumps(record(requestId="a"))) + 10
    lines = decode_object(KEY, body, Limits(max_line_bytes=small))
    assert [(d.line, d.record and d.record["requestId"]) for d in lines] == [
        (0, "a"),
        (1, None),
        (2, "c"),
    ]
    assert f"longer than {small} bytes" in (lines[1].error or "")


def test_concatenated_gzip_members_are_one_object() -> None:
    one, two = batch_body([record(requestId="a")]), batch_body([record(requestId="b")])
    lines = decode_object(KEY, one + b"\0\0" + two)
    assert [d.record and d.record["requestId"] for d in lines] == ["a", "b"]


def test_content_over_the_object_cap_is_refused_while_streaming() -> None:
    body = batch_body([record(requestId=f"r{n}") for n in range(50)])
    with pytest.raises(ObjectTooLarge, match="MAX_OBJECT_BYTES"):
        decode_object(KEY, body, Limits(max_object_bytes=10_000))


def test_single_record_object_is_line_zero() -> None:
    lines = decode_object("logs/2026/11/26/req-1.json", json.dumps(record()).encode())
    assert [(d.line, d.record and d.record["requestId"]) for d in lines] == [(0, "req-0001")]


# ids fixed and mtime=0: pytest-xdist workers must collect the same test names (a gzip
# header carries the time of day, which differed between the two workers' collections).
@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(b'{"a": 1}\n', mtime=0)[:-6]],
    ids=["not-gzip", "truncated-gzip"],
)
def test_broken_gzip_makes_the_object_unreadable(body: bytes) -> None:
    with pytest.raises(UnreadableObject):
        decode_object(KEY, body)


def test_lines_are_the_same_whatever_the_chunking() -> None:
    text = b"".join(
        b"line %d %s\n" % (n, b"x" * (n * 37 % 900)) + b"\n" * (n % 3) for n in range(400)
    )
    text += b"\n\nlast without newline"
    expected = [(n, line) for n, line in enumerate(text.split(b"\n")) if line]
    capped = [(n, None if len(line) > 500 else line) for n, line in expected]
    for size in (1, 2, 3, 7, 64, 1000, 4096, len(text)):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(split_lines(chunks, 1 << 20)) == expected, size
        assert list(split_lines(chunks, 500)) == capped, size
        assert b"".join(content(chunks_of(gzip.compress(text), size), True, 1 << 20)) == text


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
