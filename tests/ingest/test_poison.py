"""Every line of a batch object is isolated: stored (numbers made to fit) or reported, never fatal.

Each poisoned line sits between good neighbours in one object, behind which a
second object waits in the same event; over real HTTP to moto's S3 and DynamoDB.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.ingest import IngestFailed, handler
from tests.ingest.conftest import Stack
from tests.ingest.support import batch_body, load_event, log_lines, record, table_items

POISONED = "logs/2026/11/26/0192f3a4-poisoned.ndjson.gz"
LATER = "logs/2026/11/26/0192f3a4-later.ndjson.gz"
DYNAMO_MAX = Decimal("9.9999999999999999999999999999999999999E+125")
FORTY_DIGITS = "1234567890123456789012345678901234567890"

# Lines that are records whose odd values must be stored: (requestId, raw JSON fields).
# Raw text, because json.dumps cannot write NaN-free huge numbers the way a producer might.
STORED: list[tuple[str, str]] = [
    ("huge-latency", '"latencyMs": 1e200'),
    ("forty-digits", f'"latencyMs": {FORTY_DIGITS}, "usage": {{"totalTokens": {FORTY_DIGITS}}}'),
    ("tiny-ttft", '"ttftMs": 1e-200'),
    ("nan", '"latencyMs": NaN, "ttftMs": Infinity, "statusCode": -Infinity'),
    ("beyond-decimal", '"latencyMs": 1e9999999999999999999999, "ttftMs": -1e-9999999999999999999'),
    ("huge-int", '"statusCode": 1' + "0" * 5000),
    ("negative-zero", '"latencyMs": -0.0'),
    ("year-one-naive", '"timestamp": "0001-01-01T00:00:00"'),
]


def raw_record(request_id: str, fields: str) -> bytes:
    """A full record with `fields` (raw JSON members) replacing the same keys."""
    base = record(requestId=request_id)
    for name in re.findall(r'"(\w+)":', fields):
        base.pop(name, None)
    text = json.dumps(base)
    return (text[:-1] + ", " + fields + "}").encode()


WRONG_TYPES = {
    "schemaVersion": "one",
    "requestId": "wrong-types",
    "timestamp": "2026-11-26T20:19:11.123456Z",
    "method": 5,
    "path": [],
    "query": {},
    "source": ["billing"],
    "userId": {"name": "alice"},
    "requestType": 3.5,
    "projectId": True,
    "statusCode": "200",
    "latencyMs": [1],
    "ttftMs": {"ms": 1},
    "outcome": 7,
    "error": 8,
    "model": False,
    "usage": [1, 2],
    "request": "text",
    "response": 42,
    "sidecar": "x",
    "apiKeyId": {"id": "k"},
    "edgeRequestId": None,
    "writerId": [],
    "seq": "x",
}
NESTED_WRONG_TYPES = record(
    requestId="nested-wrong-types",
    usage={"promptTokens": "12", "completionTokens": None, "totalTokens": True},
    request={"body": {"messages": "not a list"}, "headers": []},
    response={"choices": [None, 5], "body": []},
)

# Lines that cannot be records: (line content, words the reason must contain).
REPORTED: list[tuple[bytes, str]] = [
    (raw_record("year-zero", '"timestamp": "0001-01-01T00:00:00+01:00"'), "timestamp"),
    (raw_record("year-10000", '"timestamp": "9999-12-31T23:59:59-01:00"'), "timestamp"),
    (json.dumps(record(requestId=12)).encode(), "requestId"),
    (json.dumps(record(timestamp=["2026"])).encode(), "timestamp"),
    (b"[1, 2, 3]", "array"),
    (b'"a string"', "string"),
    (b"null", "null"),
    (b"42", "number"),
    (b"true", "boolean"),
    (b'{"requestId": "bad-utf8", "userId": "\xff\xfe"}', "UTF-8"),
    (b'{"requestId": "truncated", "timestamp": ', "JSON"),
    (b"[" * 100_000, "deep"),
]


def s3_event(bucket: str, *keys: str) -> dict[str, Any]:
    """One S3 notification naming several objects (S3 sends one per object; Lambda DLQs merge)."""
    records = [load_event("s3_put.json", bucket=bucket, key=k)["Records"][0] for k in keys]
    return {"Records": records}


def poisoned_lines() -> list[bytes]:
    """good, poison, good, poison, ... so that every poisoned line has two good neighbours."""
    poison = [raw_record(rid, fields) for rid, fields in STORED]
    poison += [json.dumps(WRONG_TYPES).encode(), json.dumps(NESTED_WRONG_TYPES).encode()]
    poison += [line for line, _ in REPORTED]
    lines: list[bytes] = []
    for n, line in enumerate(poison):
        lines += [json.dumps(record(requestId=f"good-{n}")).encode(), line]
    lines.append(json.dumps(record(requestId=f"good-{len(poison)}")).encode())
    return lines


def put_poisoned(stack: Stack) -> list[bytes]:
    lines = poisoned_lines()
    stack.s3.put_object(Bucket=stack.bucket, Key=POISONED, Body=batch_body(lines))
    later = [record(requestId="later-0"), record(requestId="later-1")]
    stack.s3.put_object(Bucket=stack.bucket, Key=LATER, Body=batch_body(later))
    return lines


def by_request(stack: Stack) -> dict[str, dict[str, Any]]:
    return {i["requestId"]: i for i in table_items(stack.ddb, stack.table)}


def test_every_line_is_stored_or_reported_and_later_objects_still_run(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = put_poisoned(stack)

    with pytest.raises(IngestFailed) as failed:
        handler(s3_event(stack.bucket, POISONED, LATER), LocalContext(120))

    items = by_request(stack)
    goods = {f"good-{n}" for n in range(len(STORED) + 2 + len(REPORTED) + 1)}
    assert goods <= set(items)  # every neighbour written
    assert {"later-0", "later-1"} <= set(items)  # the next object in the event too
    stored = {rid for rid, _ in STORED} | {"wrong-types", "nested-wrong-types"}
    assert set(items) == goods | stored | {"later-0", "later-1"}

    out = capsys.readouterr().out
    bad = [x for x in log_lines(out) if x["event"] == "bad_record"]
    first_reported = 2 * (len(STORED) + 2) + 1
    assert [b["line"] for b in bad] == [first_reported + 2 * n for n in range(len(REPORTED))]
    for entry, (_, words) in zip(bad, REPORTED, strict=True):
        assert words.lower() in entry["reason"].lower(), entry
        assert entry["key"] == POISONED
    summary = json.loads(str(failed.value))
    assert summary["badRecords"] == len(REPORTED)
    assert summary["records"] == len(lines) + 2
    assert "Sweden" not in out  # reasons never carry content


def test_numbers_are_made_to_fit_dynamodb_and_keep_what_was_recorded(stack: Stack) -> None:
    put_poisoned(stack)
    with pytest.raises(IngestFailed):
        handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    items = by_request(stack)

    huge = items["huge-latency"]
    assert huge["latencyMs"] == DYNAMO_MAX  # clamped: still the slowest in GSI_ProjectLatency
    assert huge["latencyMsAsRecorded"] == "1E+200"

    forty = items["forty-digits"]
    assert forty["latencyMs"] == Decimal("1.2345678901234567890123456789012345679E+39")
    assert forty["totalTokens"] == forty["latencyMs"]
    assert forty["latencyMsAsRecorded"] == FORTY_DIGITS
    assert forty["totalTokensAsRecorded"] == FORTY_DIGITS

    tiny = items["tiny-ttft"]
    assert tiny["ttftMs"] == 0 and tiny["ttftMsAsRecorded"] == "1E-200"

    nan = items["nan"]
    assert "latencyMs" not in nan and nan["latencyMsAsRecorded"] == "NaN"
    assert nan["ttftMs"] == DYNAMO_MAX and nan["ttftMsAsRecorded"] == "Infinity"
    assert nan["statusCode"] == DYNAMO_MAX.copy_negate()
    assert nan["statusCodeAsRecorded"] == "-Infinity"

    beyond = items["beyond-decimal"]
    assert beyond["latencyMs"] == DYNAMO_MAX and beyond["ttftMs"] == 0

    huge_int = items["huge-int"]
    assert huge_int["statusCode"] == DYNAMO_MAX
    assert huge_int["statusCodeAsRecorded"].startswith("1000")
    assert len(huge_int["statusCodeAsRecorded"]) <= 64

    assert items["negative-zero"]["latencyMs"] == 0
    assert "latencyMsAsRecorded" not in items["negative-zero"]
    assert items["year-one-naive"]["createdAt"] == "0001-01-01T00:00:00.000000Z#year-one-naive"

    exact = items["good-0"]  # ordinary numbers are stored exactly, with nothing added
    assert exact["latencyMs"] == Decimal("812.305")
    assert not [name for name in exact if name.endswith("AsRecorded")]


def test_wrong_types_become_unknown_or_are_left_out(stack: Stack) -> None:
    put_poisoned(stack)
    with pytest.raises(IngestFailed):
        handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    items = by_request(stack)

    wrong = items["wrong-types"]
    assert wrong["id"] == "project#unknown"
    assert (wrong["userId"], wrong["source"], wrong["model"]) == ("unknown",) * 3
    assert (wrong["requestType"], wrong["outcome"]) == ("3.5", "7")
    for number in ("statusCode", "latencyMs", "ttftMs", "totalTokens", "apiKeyId"):
        assert number not in wrong
    nested = items["nested-wrong-types"]
    assert "promptTokens" not in nested and "totalTokens" not in nested
    assert "responsePreview" not in nested


def test_reingesting_the_poisoned_object_overwrites_the_same_items(stack: Stack) -> None:
    put_poisoned(stack)
    with pytest.raises(IngestFailed):
        handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    first = table_items(stack.ddb, stack.table)
    with pytest.raises(IngestFailed):
        handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    again = table_items(stack.ddb, stack.table)
    assert again == first
    assert len({(i["id"], i["createdAt"]) for i in again}) == len(again)


def test_over_long_line_is_reported_and_a_raised_cap_stores_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    big = record(requestId="ten-mb")
    big["request"]["body"]["messages"][-1]["content"] = "p" * (10 << 20)
    lines = [record(requestId="before"), big, record(requestId="after")]
    stack.s3.put_object(Bucket=stack.bucket, Key=POISONED, Body=batch_body(lines))

    with pytest.raises(IngestFailed):
        handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    assert set(by_request(stack)) == {"before", "after"}
    [bad] = [x for x in log_lines(capsys.readouterr().out) if x["event"] == "bad_record"]
    assert bad["line"] == 1 and "MAX_LINE_BYTES" in bad["reason"]

    monkeypatch.setenv("MAX_LINE_BYTES", str(16 << 20))
    handler(s3_event(stack.bucket, POISONED), LocalContext(120))
    stored = by_request(stack)["ten-mb"]
    assert stored["promptPreview"] == "p" * 2048


def test_sqs_batch_reports_the_poisoned_message_only(stack: Stack) -> None:
    put_poisoned(stack)
    event = load_event(
        "sqs_s3_notifications.json", bucket=stack.bucket, key_good=LATER, key_poisoned=POISONED
    )

    answer = handler(event, LocalContext(120))

    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    items = by_request(stack)
    assert {"later-0", "later-1", "good-0", "huge-latency", "wrong-types"} <= set(items)
