"""The pipeline without Lambda: moto's real S3 -> SQS notifications, the runner, the DLQ redrive."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from central_llm_ops import dlq_redrive
from tests.conftest import AWS_TEST_ENV
from tests.ingest.conftest import Stack
from tests.ingest.support import load_event, log_lines, put_batch, put_single, record, table_items
from tests.procs import Proc, python_module

ROOT = Path(__file__).resolve().parents[2]


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def depth(stack: Stack, queue_url: str) -> int:
    """Messages in a queue, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = stack.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return sum(int(attrs["Attributes"][n]) for n in names)


def start_runner(stack: Stack, log_dir: Path, **env: str) -> Proc:
    return Proc(
        "ingest-runner",
        python_module(
            "central_llm_ops.ingest_runner",
            "--queue",
            stack.resources.queue_url,
            "--wait-seconds",
            "1",
        ),
        log_dir=log_dir,
        env={
            **AWS_TEST_ENV,
            **stack.env(),
            "PYTHONPATH": str(ROOT),
            **env,
        },
        cwd=ROOT,
    )


@pytest.fixture
def runner_logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def runner(stack: Stack, runner_logs: Path) -> Iterator[Proc]:
    proc = start_runner(stack, runner_logs)
    yield proc
    proc.kill()


def test_object_put_reaches_the_table_through_the_queue(stack: Stack, runner: Proc) -> None:
    put_batch(
        stack.s3,
        stack.bucket,
        "logs/2026/11/26/0192f3a4-e2e.ndjson.gz",
        [record(requestId=f"e2e-{n}") for n in range(40)],
    )
    put_single(stack.s3, stack.bucket, "logs/2026/11/26/single one+1.json", record())
    put_single(stack.s3, stack.bucket, "elsewhere/not-audit.json", record(requestId="x"))

    eventually(lambda: len(table_items(stack.ddb, stack.table)) == 41, "41 items")
    eventually(lambda: depth(stack, stack.resources.queue_url) == 0, "the queue to drain")

    items = table_items(stack.ddb, stack.table)
    assert "x" not in {i["requestId"] for i in items}
    assert "logs/2026/11/26/single one+1.json" in {i["auditObjectKey"] for i in items}
    runner.signal(signal.SIGTERM)
    assert runner.wait(timeout=15) == 0
    lines = log_lines(runner.log())  # every line is JSON
    assert lines[-1]["event"] == "runner_stopped"
    assert sum(line.get("items", 0) for line in lines if line["event"] == "ingest_summary") == 41


def test_failed_events_land_in_the_dlq_and_redrive_ingests_them(
    stack: Stack, runner_logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = start_runner(stack, runner_logs, TABLE_NAME="MissingTable")  # a misconfiguration
    try:
        put_batch(
            stack.s3,
            stack.bucket,
            "logs/2026/11/26/0192f3a4-dlq.ndjson.gz",
            [record(requestId=f"d{n}") for n in range(5)],
        )
        # visibility 1 s, maxReceiveCount 2: SQS moves it to the DLQ after two failures
        eventually(lambda: depth(stack, stack.resources.dlq_url) == 1, "the DLQ to hold it")
    finally:
        broken.stop()
    assert table_items(stack.ddb, stack.table) == []
    assert depth(stack, stack.resources.queue_url) == 0

    assert dlq_redrive.main(["--dlq", stack.resources.dlq_url]) == 0

    assert sorted(i["requestId"] for i in table_items(stack.ddb, stack.table)) == [
        f"d{n}" for n in range(5)
    ]
    assert depth(stack, stack.resources.dlq_url) == 0
    done = [x for x in log_lines(capsys.readouterr().out) if x["event"] == "redrive_done"]
    assert done[-1]["redriven"] == 1


def lambda_dlq_message(stack: Stack, key: str) -> dict[str, Any]:
    """What Lambda's async DLQ holds: the failed S3 event as the body, the error as attributes."""
    return {
        "QueueUrl": stack.resources.dlq_url,
        "MessageBody": json.dumps(load_event("s3_put.json", bucket=stack.bucket, key=key)),
        "MessageAttributes": {
            "ErrorCode": {"DataType": "Number", "StringValue": "200"},
            "ErrorMessage": {"DataType": "String", "StringValue": "IngestFailed"},
        },
    }


def test_redrive_removes_only_what_succeeded(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    good, poisoned = "logs/2026/11/26/good.ndjson.gz", "logs/2026/11/26/poisoned.ndjson.gz"
    put_batch(stack.s3, stack.bucket, good, [record(requestId="ok-1"), record(requestId="ok-2")])
    put_batch(stack.s3, stack.bucket, poisoned, [record(requestId="ok-3"), b"{oops"])
    for key in (good, poisoned):
        stack.sqs.send_message(**lambda_dlq_message(stack, key))

    assert dlq_redrive.main(["--dlq", stack.resources.dlq_url, "--dry-run"]) == 0
    listed = [x for x in log_lines(capsys.readouterr().out) if x["event"] == "dlq_message"]
    assert sorted(x["objects"][0] for x in listed) == sorted(
        f"s3://{stack.bucket}/{k}" for k in (good, poisoned)
    )
    assert {x["ErrorMessage"] for x in listed} == {"IngestFailed"}
    assert table_items(stack.ddb, stack.table) == []

    assert dlq_redrive.main(["--dlq", stack.resources.dlq_url]) == 1

    ids = sorted(i["requestId"] for i in table_items(stack.ddb, stack.table))
    assert ids == ["ok-1", "ok-2", "ok-3"]  # the poisoned object's good line too
    left = stack.sqs.receive_message(QueueUrl=stack.resources.dlq_url, WaitTimeSeconds=0)
    [message] = left["Messages"]  # kept, and visible again at once
    assert poisoned in json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"]
