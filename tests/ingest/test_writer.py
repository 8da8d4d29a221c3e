"""BatchWriteItem behaviour over real HTTP: groups of 25, unique keys, throttling, budgets."""

from __future__ import annotations

import pytest

from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.ingest import TIME_MARGIN_S, IngestFailed, handler
from llm_audit.items import AuditSource, ItemRules, build_item
from llm_audit.writer import Backoff, Deadline, DynamoWriter
from tests.ingest.aws_proxy import AwsProxy
from tests.ingest.conftest import Stack
from tests.ingest.support import load_event, log_lines, put_batch, record, table_items

KEY = "logs/2026/11/26/0192f3a4-throttled.ndjson.gz"


def assert_groups_are_valid(proxy: AwsProxy) -> None:
    for call in proxy.batch_writes():
        assert 1 <= len(call.batch_keys) <= 25
        assert len(set(call.batch_keys)) == len(call.batch_keys), "duplicate keys in a group"


def test_unprocessed_items_are_retried_until_all_are_written(
    stack: Stack, aws_proxy: AwsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", aws_proxy.url)
    aws_proxy.throttle = lambda call, size: size // 2 if call <= 4 else size
    put_batch(stack.s3, stack.bucket, KEY, [record(requestId=f"r{n:03d}") for n in range(60)])

    handler(load_event("s3_put.json", bucket=stack.bucket, key=KEY), LocalContext(60))

    assert len(table_items(stack.ddb, stack.table)) == 60
    calls = aws_proxy.batch_writes()
    assert len(calls) > 3  # 60 items need 3 groups; the unprocessed halves needed more calls
    assert_groups_are_valid(aws_proxy)


def test_throttling_past_the_time_budget_fails_the_invocation(
    stack: Stack,
    aws_proxy: AwsProxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", aws_proxy.url)
    aws_proxy.throttle = lambda call, size: 0  # the table takes nothing
    put_batch(stack.s3, stack.bucket, KEY, [record(requestId=f"r{n}") for n in range(3)])

    with pytest.raises(IngestFailed):
        # one second of budget beyond the handler's safety margin
        handler(
            load_event("s3_put.json", bucket=stack.bucket, key=KEY),
            LocalContext(TIME_MARGIN_S + 1.0),
        )

    failed = [x for x in log_lines(capsys.readouterr().out) if x["event"] == "item_not_written"]
    assert sorted(f["line"] for f in failed) == [0, 1, 2]
    assert all("UnprocessedItems" in f["reason"] for f in failed)
    assert len(aws_proxy.batch_writes()) >= 2  # it did retry before giving up


def test_duplicate_records_in_an_object_are_one_item_in_one_request(
    stack: Stack, aws_proxy: AwsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", aws_proxy.url)
    put_batch(stack.s3, stack.bucket, KEY, [record(), record(), record(requestId="other")])

    handler(load_event("s3_put.json", bucket=stack.bucket, key=KEY), LocalContext(60))

    items = table_items(stack.ddb, stack.table)
    assert sorted((i["requestId"], i["auditLine"]) for i in items) == [
        ("other", 2),
        ("req-0001", 1),  # the last of the two identical lines wins
    ]
    assert_groups_are_valid(aws_proxy)


def test_an_item_dynamodb_refuses_fails_alone(stack: Stack) -> None:
    source = AuditSource(stack.bucket, KEY, 0)
    items = [build_item(record(requestId=f"r{n:02d}"), source, ItemRules()) for n in range(30)]
    items[7]["responsePreview"] = "x" * 500_000  # over DynamoDB's 400 KB item limit
    writer = DynamoWriter(stack.ddb, stack.table, backoff=Backoff(base_s=0.01))

    outcome = writer.write(items, Deadline(30))

    assert outcome.written == 29
    assert [(f.item["requestId"], f.reason) for f in outcome.failed] == [
        ("r07", "ValidationException")
    ]
    assert len(table_items(stack.ddb, stack.table)) == 29
