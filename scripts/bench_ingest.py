#!/usr/bin/env python3
"""Benchmark: how many items per second the ingestion handler writes to a local DynamoDB endpoint.

    python scripts/bench_ingest.py [--objects 10] [--records 1000] [--singles 200]

Starts a moto server on loopback (or uses AWS_ENDPOINT_URL when set), creates
the audit resources, uploads `--objects` batch objects of `--records` records
each plus `--singles` single-record objects, then calls
`llm_audit.ingest.handler` on one S3 event per object, in this process, and
times only those calls. Prints one JSON line per mode and a summary.

The figure is a property of the endpoint as much as of the handler: against
moto every BatchWriteItem is served by one Python process that also maintains
the three GSIs. It is a benchmark, never a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lambda"), str(ROOT)]  # run from a checkout without installing

from central_llm_ops.audit_table import load_definition  # noqa: E402
from central_llm_ops.ingest_sqs import LocalContext  # noqa: E402
from central_llm_ops.local_aws import AwsClients, ensure_audit_resources  # noqa: E402
from llm_audit.ingest import handler  # noqa: E402

START = datetime(2026, 11, 26, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """AWS_ENDPOINT_URL if set, else a fresh moto server for the run."""
    given = os.environ.get("AWS_ENDPOINT_URL")
    if given:
        yield given
        return
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def record(n: int, run: str) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "requestId": f"bench-{run}-{n:07d}",
        "timestamp": (START + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": "bench",
        "userId": f"user-{n % 50}",
        "requestType": "chat",
        "projectId": f"project-{n % 5}",
        "statusCode": 200 if n % 20 else 500,
        "latencyMs": 100.0 + n % 997,
        "ttftMs": 12.5,
        "outcome": "completed",
        "model": "qwen2.5-0.5b-instruct",
        "usage": {"promptTokens": 20, "completionTokens": 200, "totalTokens": 220},
        "request": {"body": {"messages": [{"role": "user", "content": "x" * 400}]}},
        "response": {"choices": [{"index": 0, "content": "y" * 1500}], "body": None},
    }


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    s3 = {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}}
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}]}


def run_mode(bucket: str, keys: list[str], items: int) -> dict[str, Any]:
    """Time the handler on one S3 event per object (its JSON log lines are kept aside)."""
    logs = io.StringIO()
    start, cpu_start = time.perf_counter(), time.process_time()
    with redirect_stdout(logs):
        for key in keys:
            handler(s3_event(bucket, key), LocalContext(600))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {
        "objects": len(keys),
        "items": items,
        "seconds": round(seconds, 3),
        "itemsPerSecond": round(items / seconds, 1),
        "handlerCpuSeconds": round(cpu, 3),  # this process only; the endpoint's CPU is apart
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10, help="batch objects")
    parser.add_argument("--records", type=int, default=1000, help="records per batch object")
    parser.add_argument("--singles", type=int, default=200, help="single-record objects")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_REGION", "eu-central-1")
    run = uuid.uuid4().hex[:8]
    with moto_endpoint() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        session = boto3.session.Session(region_name=os.environ["AWS_REGION"])
        aws = AwsClients.from_session(session)
        names = {"bucket": f"bench-{run}", "table": f"{load_definition()['TableName']}-{run}"}
        ensure_audit_resources(
            aws, names["bucket"], names["table"], f"bench-q-{run}", f"bench-dlq-{run}", "logs"
        )
        os.environ.update(TABLE_NAME=names["table"], AUDIT_PREFIX="logs")
        batch_keys, single_keys, n = [], [], 0
        for b in range(args.objects):
            lines = [json.dumps(record(n + i, run)).encode() + b"\n" for i in range(args.records)]
            n += args.records
            key = f"logs/2026/11/26/batch-{run}-{b:04d}.ndjson.gz"
            aws.s3.put_object(Bucket=names["bucket"], Key=key, Body=gzip.compress(b"".join(lines)))
            batch_keys.append(key)
        for _ in range(args.singles):
            key = f"logs/2026/11/26/bench-{run}-{n:07d}.json"
            aws.s3.put_object(Bucket=names["bucket"], Key=key, Body=json.dumps(record(n, run)))
            single_keys.append(key)
            n += 1
        results = {
            "batch": run_mode(names["bucket"], batch_keys, args.objects * args.records),
            "single": run_mode(names["bucket"], single_keys, args.singles),
        }
        count = aws.dynamodb.describe_table(TableName=names["table"])["Table"]["ItemCount"]
    for mode, result in results.items():
        print(json.dumps({"mode": mode, "endpoint": "moto", **result, "tableItems": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
