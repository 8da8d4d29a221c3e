"""Read audit records back from S3 the way a consumer would: list, fetch, decode, index by id."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
import orjson


@dataclass
class AuditObjects:
    """Every audit object under a prefix, decoded."""

    keys: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, bytes] = field(default_factory=dict)

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["requestId"]: r for r in self.records}

    def distinct_ids(self) -> set[str]:
        return {r["requestId"] for r in self.records}


def decode_object(key: str, body: bytes) -> list[dict[str, Any]]:
    if key.endswith(".ndjson.gz"):
        lines = gzip.decompress(body).split(b"\n")
        assert lines[-1] == b"", f"{key}: batch must end with a newline"
        return [orjson.loads(line) for line in lines[:-1]]
    if key.endswith(".json"):
        return [orjson.loads(body)]
    raise AssertionError(f"unexpected audit object key {key}")


def read_audit(endpoint: str, bucket: str, prefix: str = "logs/") -> AuditObjects:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    out = AuditObjects()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            out.keys.append(key)
            out.raw[key] = body
            out.records.extend(decode_object(key, body))
    return out


def wait_for_records(
    endpoint: str, bucket: str, request_ids: Iterable[str], timeout: float = 30.0
) -> AuditObjects:
    """Poll S3 until every id has a record (or fail listing the missing ones)."""
    wanted = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:
        found = read_audit(endpoint, bucket)
        missing = wanted - found.distinct_ids()
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} records never reached S3: {sorted(missing)[:10]}"
            )
        time.sleep(0.2)


def create_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
