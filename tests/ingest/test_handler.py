"""The Lambda handler on real S3/SQS event JSON against moto's S3 and DynamoDB (real HTTP)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.config import ConfigError
from llm_audit.events import UnknownEvent
from llm_audit.ingest import IngestFailed, cached_clients, client_fingerprint, handler
from tests.ingest.aws_proxy import AwsProxy
from tests.ingest.conftest import Stack
from tests.ingest.support import (
    load_event,
    log_lines,
    put_batch,
    put_single,
    record,
    table_items,
)

BATCH_KEY = "logs/2026/11/26/0192f3a4b5c6-sidecar-1.ndjson.gz"


def context() -> LocalContext:
    return LocalContext(budget_s=60)


def summary_of(output: str) -> dict[str, object]:
    summaries = [line for line in log_lines(output) if line["event"] == "ingest_summary"]
    assert len(summaries) == 1, output
    return summaries[0]


def test_single_record_object_becomes_one_item(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "logs/2026/11/26/req-0001.json"
    put_single(stack.s3, stack.bucket, key, record())

    answer = handler(load_event("s3_put.json", bucket=stack.bucket, key=key), context())

    [item] = table_items(stack.ddb, stack.table)
    assert item["id"] == "project#billing-app"
    assert item["createdAt"] == "2026-11-26T20:19:11.123456Z#req-0001"
    assert (item["auditBucket"], item["auditObjectKey"], item["auditLine"]) == (
        stack.bucket,
        key,
        0,
    )
    assert item["latencyMs"] == Decimal("812.305")
    assert item["promptPreview"] == "And of Sweden?\nOne word."
    assert answer["items"] == 1
    summary = summary_of(capsys.readouterr().out)
    assert (summary["objects"], summary["records"], summary["items"], summary["failures"]) == (
        1,
        1,
        1,
        0,
    )


def test_batch_object_becomes_one_item_per_line(stack: Stack) -> None:
    records = [
        record(requestId=f"req-{n:04d}", userId=f"user-{n % 3}", statusCode=200 + n % 2)
        for n in range(60)
    ]
    put_batch(stack.s3, stack.bucket, BATCH_KEY, records)

    handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())

    items = table_items(stack.ddb, stack.table)
    assert len(items) == 60
    by_id = {i["requestId"]: i for i in items}
    assert by_id["req-0042"]["auditLine"] == 42
    assert by_id["req-0042"]["userId"] == "user-0"
    assert by_id["req-0043"]["statusCode"] == 201
    assert {i["auditObjectKey"] for i in items} == {BATCH_KEY}


def test_ingesting_the_same_object_twice_gives_the_same_items(stack: Stack) -> None:
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [record(requestId=f"r{n}") for n in range(30)])
    event = load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY)

    handler(event, context())
    first = table_items(stack.ddb, stack.table)
    handler(event, context())

    assert table_items(stack.ddb, stack.table) == first
    assert len(first) == 30


def test_poisoned_lines_do_not_block_the_others_and_fail_the_invocation(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    without_timestamp = {k: v for k, v in record(requestId="x").items() if k != "timestamp"}
    lines: list[dict[str, Any] | bytes] = [
        record(requestId="good-0"),
        b'{"requestId": "broken", "timestamp": ',
        record(requestId="good-2"),
        without_timestamp,
        record(requestId="good-4"),
    ]
    put_batch(stack.s3, stack.bucket, BATCH_KEY, lines)

    with pytest.raises(IngestFailed):
        handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())

    ids = [i["requestId"] for i in table_items(stack.ddb, stack.table)]
    assert sorted(ids) == ["good-0", "good-2", "good-4"]
    out = capsys.readouterr().out
    bad = [line for line in log_lines(out) if line["event"] == "bad_record"]
    assert [(b["bucket"], b["key"], b["line"]) for b in bad] == [
        (stack.bucket, BATCH_KEY, 1),
        (stack.bucket, BATCH_KEY, 3),
    ]
    assert "timestamp" in bad[1]["reason"]
    assert summary_of(out)["badRecords"] == 2
    assert "Sweden" not in out  # logs never carry prompts or answers


def test_url_encoded_key_is_read_under_its_real_name(stack: Stack) -> None:
    real_key = "logs/2026/11/26/team a+b été.json"
    put_single(stack.s3, stack.bucket, real_key, record())

    handler(load_event("s3_put_encoded_key.json", bucket=stack.bucket), context())

    [item] = table_items(stack.ddb, stack.table)
    assert item["auditObjectKey"] == real_key


def test_missing_object_fails_the_invocation(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    event = load_event("s3_put.json", bucket=stack.bucket, key="logs/2026/11/26/gone.json")
    with pytest.raises(IngestFailed):
        handler(event, context())
    [failure] = [x for x in log_lines(capsys.readouterr().out) if x["event"] == "object_failed"]
    assert failure["key"] == "logs/2026/11/26/gone.json"
    assert "NoSuchKey" in failure["reason"]


def test_archive_copy_with_bucket_owner_full_control(
    stack: Stack, aws_proxy: AwsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = stack.resources.archive_bucket
    assert archive is not None
    monkeypatch.setenv("ARCHIVE_BUCKET", archive)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_proxy.url)  # to see the wire
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [record()])

    handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())

    original = stack.s3.get_object(Bucket=stack.bucket, Key=BATCH_KEY)["Body"].read()
    assert stack.s3.get_object(Bucket=archive, Key=BATCH_KEY)["Body"].read() == original
    [copy] = [s for s in aws_proxy.seen if "x-amz-copy-source" in s.headers]
    assert copy.path.startswith(f"/{archive}/logs/")
    assert copy.headers["x-amz-acl"] == "bucket-owner-full-control"


def test_retention_days_sets_the_ttl_attribute(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_DAYS", "30")
    monkeypatch.setenv("MAX_PREVIEW_CHARS", "5")
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [record()])

    handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())

    [item] = table_items(stack.ddb, stack.table)
    request_start = datetime(2026, 11, 26, 20, 19, 11, tzinfo=UTC).timestamp()
    assert item["expiresAt"] == int(request_start) + 30 * 86400
    assert item["promptPreview"] == "And o"
    ttl = stack.ddb.describe_time_to_live(TableName=stack.table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiresAt"


def test_sqs_event_reports_only_the_failed_message(stack: Stack) -> None:
    good, poisoned = "logs/2026/11/26/good.ndjson.gz", "logs/2026/11/26/poisoned.ndjson.gz"
    put_batch(stack.s3, stack.bucket, good, [record(requestId="g1"), record(requestId="g2")])
    put_batch(stack.s3, stack.bucket, poisoned, [record(requestId="p1"), b"\xff\xfe"])
    event = load_event(
        "sqs_s3_notifications.json", bucket=stack.bucket, key_good=good, key_poisoned=poisoned
    )

    answer = handler(event, context())

    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    ids = sorted(i["requestId"] for i in table_items(stack.ddb, stack.table))
    assert ids == ["g1", "g2", "p1"]


def test_test_event_alone_succeeds_without_writing(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = handler(load_event("s3_test_event.json", bucket=stack.bucket), context())
    assert answer["skipped"] == 1 and answer["failures"] == 0
    assert table_items(stack.ddb, stack.table) == []
    assert summary_of(capsys.readouterr().out)["skipped"] == 1


def test_missing_table_fails_every_item(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE_NAME", "NoSuchTable")
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [record()])
    with pytest.raises(IngestFailed) as failed:
        handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())
    assert json.loads(str(failed.value))["failedItems"] == 1


def test_bad_setting_fails_loudly_before_any_write(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_PREVIEW_CHARS", "lots")
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [record()])
    with pytest.raises(ConfigError, match="MAX_PREVIEW_CHARS"):
        handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())
    [line] = log_lines(capsys.readouterr().out)
    assert line["event"] == "config_invalid"
    assert table_items(stack.ddb, stack.table) == []


def test_unknown_event_is_refused_and_logged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownEvent):
        handler({"detail-type": "Scheduled Event"}, context())
    assert log_lines(capsys.readouterr().out)[0]["event"] == "unknown_event"


def test_sqs_batch_whose_every_message_failed_raises_for_the_errors_metric(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Powertools' raise_on_entire_batch_failure: Lambda's Errors metric must see it."""
    poisoned = "logs/2026/11/26/poisoned.ndjson.gz"
    put_batch(stack.s3, stack.bucket, poisoned, [record(requestId="p1"), b"\xff\xfe"])
    event = load_event(
        "sqs_s3_notifications.json",
        bucket=stack.bucket,
        key_good="logs/2026/11/26/missing.ndjson.gz",
        key_poisoned=poisoned,
    )
    event["Records"] = event["Records"][:2]  # no test event: both messages fail

    with pytest.raises(IngestFailed) as failed:
        handler(event, context())

    detail = json.loads(str(failed.value))
    assert detail["error"] == "every message of the batch failed"
    assert detail["failedUnits"] == 2
    assert any("NoSuchKey" in reason for reason in detail["reasons"])
    assert [i["requestId"] for i in table_items(stack.ddb, stack.table)] == ["p1"]
    assert summary_of(capsys.readouterr().out)["failedUnits"] == 2


def test_sqs_batch_of_test_events_only_succeeds(stack: Stack) -> None:
    event = load_event(
        "sqs_s3_notifications.json", bucket=stack.bucket, key_good="x", key_poisoned="y"
    )
    event["Records"] = event["Records"][2:]
    assert handler(event, context()) == {"batchItemFailures": []}


def test_edge_attribution_reaches_the_item_and_nothing_key_like_does(stack: Stack) -> None:
    edge = record(
        apiKeyId="a1b2c3d4e5",
        edgeRequestId="6f2b0c9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f",
        apiKey="sk-live-secret-value",
        request={**record()["request"], "headers": {"x-api-key": "[REDACTED]"}},
    )
    put_batch(stack.s3, stack.bucket, BATCH_KEY, [edge, record(requestId="no-edge", apiKeyId=None)])

    handler(load_event("s3_put.json", bucket=stack.bucket, key=BATCH_KEY), context())

    items = {i["requestId"]: i for i in table_items(stack.ddb, stack.table)}
    with_edge, without = items["req-0001"], items["no-edge"]
    assert with_edge["apiKeyId"] == "a1b2c3d4e5"
    assert with_edge["edgeRequestId"] == "6f2b0c9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
    assert "apiKeyId" not in without and "edgeRequestId" not in without
    assert "sk-live-secret-value" not in json.dumps(with_edge, default=str)
    assert {name for name in with_edge if "key" in name.lower()} == {"apiKeyId", "auditObjectKey"}


def test_warm_invocations_reuse_the_clients(
    stack: Stack, aws_proxy: AwsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_single(stack.s3, stack.bucket, "logs/2026/11/26/req-0001.json", record())
    event = load_event("s3_put.json", bucket=stack.bucket, key="logs/2026/11/26/req-0001.json")
    first = cached_clients(None, client_fingerprint(os.environ))
    handler(event, context())
    handler(event, context())
    assert cached_clients(None, client_fingerprint(os.environ)) is first

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_proxy.url)  # another environment: new clients
    other = cached_clients(None, client_fingerprint(os.environ))
    assert other is not first
    handler(event, context())
    assert [s for s in aws_proxy.seen if s.path.startswith(f"/{stack.bucket}/logs/")]
