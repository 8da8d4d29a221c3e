#!/usr/bin/env python3
"""Benchmark: records per second `central-llm-audit-verify` checks against a local S3.

    python scripts/bench_verify.py [--objects 40] [--records 1000] [--per-digest 10]

Starts a moto server on loopback (or uses AWS_ENDPOINT_URL when set), writes a
synthetic trail the way the sidecar does (batch objects of `--records` records
of ~1.5 KB, gzip'd, keyed by batch id; a chain of unsigned digests listing
them, `--per-digest` objects each), then runs the verify command's `verify()`
in this process over the last hour and prints its stats as one JSON line.
The figure includes the S3 reads (moto: one Python process); a benchmark,
never a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import moto_endpoint

from central_llm_ops.audit_verify import Bucket, Window, verify
from sidecar_audit.integrity.digest import (
    ChainHead,
    digest_body,
    digest_key,
    envelope,
    object_entry,
    sha256_hex,
)

WRITER = "00000000beec0001"


def record(seq: int, moment: datetime) -> bytes:
    return orjson.dumps(
        {
            "writerId": WRITER,
            "seq": seq,
            "schemaVersion": 1,
            "requestId": f"bench-{seq:08d}",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "source": "bench",
            "userId": "u",
            "statusCode": 200,
            "request": {"body": {"messages": [{"role": "user", "content": "x" * 600}]}},
            "response": {"body": {"choices": [{"text": f"answer {seq} " + "y" * 600}]}},
        }
    )


def write_trail(s3: object, bucket: str, objects: int, records: int, per_digest: int) -> int:
    start = datetime.now(UTC) - timedelta(minutes=30)
    head: ChainHead | None = None
    pending = []
    seq = 0
    for index in range(objects):
        moment = start + timedelta(seconds=5 * index)
        payloads = [record(seq + i, moment) for i in range(records)]
        seq += records
        body = gzip.compress(b"".join(p + b"\n" for p in payloads), compresslevel=6, mtime=0)
        key = f"logs/{moment:%Y/%m/%d}/{moment:%Y%m%dT%H%M%S%f}Z-{WRITER}-{index:010d}.ndjson.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=body)  # type: ignore[attr-defined]
        pending.append(object_entry(key, body, payloads))
        if len(pending) == per_digest or index == objects - 1:
            digest_seq = 0 if head is None else head.digest_seq + 1
            created = moment + timedelta(seconds=1)
            data = envelope(
                digest_body(
                    writer_id=WRITER,
                    digest_seq=digest_seq,
                    created=created,
                    bucket=bucket,
                    prefix="logs",
                    previous=head,
                    seq_next=seq,
                    objects=pending,
                    tombstones=[],
                ),
                None,
            )
            dkey = digest_key("logs", WRITER, digest_seq, created)
            s3.put_object(Bucket=bucket, Key=dkey, Body=data)  # type: ignore[attr-defined]
            head, pending = ChainHead(digest_seq, dkey, sha256_hex(data)), []
    return seq


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--objects", type=int, default=40)
    cli.add_argument("--records", type=int, default=1000)
    cli.add_argument("--per-digest", type=int, default=10)
    cli.add_argument("--workers", type=int, default=16)
    args = cli.parse_args()
    with moto_endpoint() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(name, "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "eu-central-1")
        s3 = boto3.client("s3", region_name="eu-central-1")
        bucket = "bench-verify"
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
        )
        total = write_trail(s3, bucket, args.objects, args.records, args.per_digest)
        now = datetime.now(UTC)
        window = Window(now - timedelta(hours=1), now, timedelta(seconds=0), now)
        started = time.perf_counter()
        findings = verify(Bucket(bucket, args.workers), "logs", window, None, None)
        seconds = time.perf_counter() - started
        result = {
            "recordsWritten": total,
            "recordsChecked": len(findings.records),
            "objects": findings.objects,
            "digests": findings.digests,
            "problems": len(findings.problems),
            "seconds": round(seconds, 3),
            "recordsPerSecond": round(len(findings.records) / seconds, 1),
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
