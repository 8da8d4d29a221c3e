"""Decompressed size is capped while streaming: over-cap objects go to the DLQ, memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.ingest import IngestFailed, handler
from tests.conftest import AWS_TEST_ENV
from tests.ingest.conftest import Stack
from tests.ingest.support import batch_body, load_event, log_lines, record, table_items
from tests.ingest.test_runner import depth, eventually, start_runner

ROOT = Path(__file__).resolve().parents[2]
BIG = "logs/2026/11/26/0192f3a4-big.ndjson.gz"
SMALL = "logs/2026/11/26/0192f3a4-small.ndjson.gz"
BOMB = "logs/2026/11/26/0192f3a4-bomb.ndjson.gz"
MIB = 1 << 20


def gzip_bomb(inflated: int, byte: bytes = b"\0") -> bytes:
    """A gzip member of `inflated` repeated bytes, compressed without ever holding them all."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = byte * MIB
    parts = [packer.compress(block) for _ in range(inflated // MIB)]
    return b"".join([*parts, packer.flush()])


def records_of_size(at_least: int) -> list[dict[str, object]]:
    one = len(json.dumps(record())) + 1
    return [record(requestId=f"big-{n}") for n in range(at_least // one + 1)]


def two_object_event(bucket: str) -> dict[str, object]:
    first, second = (
        load_event("s3_put.json", bucket=bucket, key=k)["Records"][0] for k in (BIG, SMALL)
    )
    return {"Records": [first, second]}


def test_object_over_the_cap_fails_with_its_reason_and_the_next_object_is_ingested(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_OBJECT_BYTES", str(MIB))
    stack.s3.put_object(Bucket=stack.bucket, Key=BIG, Body=batch_body(records_of_size(2 * MIB)))
    stack.s3.put_object(Bucket=stack.bucket, Key=SMALL, Body=batch_body([record()]))

    with pytest.raises(IngestFailed) as failed:
        handler(two_object_event(stack.bucket), LocalContext(120))

    assert "MAX_OBJECT_BYTES" in str(failed.value)  # what Lambda's DLQ keeps as ErrorMessage
    logged = log_lines(capsys.readouterr().out)
    [failure] = [x for x in logged if x["event"] == "object_failed"]
    assert failure["key"] == BIG
    assert f"more than {MIB} bytes" in failure["reason"]
    assert "MAX_OBJECT_BYTES" in failure["reason"]
    ids = {i["requestId"] for i in table_items(stack.ddb, stack.table)}
    assert "req-0001" in ids  # the later object


def test_single_record_object_over_the_cap_fails_too(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_OBJECT_BYTES", "1000")
    key = "logs/2026/11/26/req-0001.json"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=json.dumps(record()).encode())
    with pytest.raises(IngestFailed, match="MAX_OBJECT_BYTES"):
        handler(load_event("s3_put.json", bucket=stack.bucket, key=key), LocalContext(60))
    assert table_items(stack.ddb, stack.table) == []


def test_over_cap_object_goes_through_the_queue_to_the_dlq(stack: Stack, tmp_path: Path) -> None:
    runner = start_runner(stack, tmp_path, MAX_OBJECT_BYTES=str(MIB))
    try:
        stack.s3.put_object(Bucket=stack.bucket, Key=BOMB, Body=gzip_bomb(8 * MIB))
        # visibility 1 s, maxReceiveCount 2: SQS moves the message on after two failures
        eventually(lambda: depth(stack, stack.resources.dlq_url) == 1, "the DLQ to hold it")
    finally:
        runner.stop()
    assert depth(stack, stack.resources.queue_url) == 0
    logged = log_lines(runner.log_path.read_text())
    reasons = [x["reason"] for x in logged if x["event"] == "object_failed"]
    assert reasons and all("MAX_OBJECT_BYTES" in r for r in reasons)
    [message] = stack.sqs.receive_message(QueueUrl=stack.resources.dlq_url)["Messages"]
    assert BOMB.rsplit("/", 1)[1] in message["Body"]


MEASURE = """
import json, sys
from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.ingest import handler
event = json.loads(sys.argv[1])
try:
    handler(event, LocalContext(300))
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
# VmHWM, this process image's own peak: ru_maxrss would also count the pytest process this
# one was forked from (Linux keeps the pre-exec high-water mark in it).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"maxRssKiB": hwm, "error": error}))
"""


def test_a_gzip_bomb_is_refused_with_bounded_memory(stack: Stack) -> None:
    """1 MB of gzip inflating to 1 GiB, default settings: peak RSS of the whole process."""
    stack.s3.put_object(Bucket=stack.bucket, Key=BOMB, Body=gzip_bomb(1024 * MIB))
    event = load_event("s3_put.json", bucket=stack.bucket, key=BOMB)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(event)],
        env={**AWS_TEST_ENV, **stack.env(), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error"] is not None and "MAX_OBJECT_BYTES" in result["error"]
    # the interpreter, boto3 and a few MiB of buffers; the function has 512 MB
    assert result["maxRssKiB"] < 256 * 1024, result
