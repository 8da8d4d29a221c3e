"""Reading the sidecar's audit objects back from S3 and checking that every request is there.

The layout is the project's (DESIGN.md, wire contract 2): gzip'd NDJSON batch
objects `<prefix>/YYYY/MM/DD/<batch id>.ndjson.gz`, or one `<requestId>.json`
per request when the batch size is 1.

Invariants: each object is fetched and decoded once per check (objects never
change once written); a record counts for the id in its `requestId`; an id seen
twice is a duplicate, never a second find; an object that cannot be decoded is
reported by key, never skipped silently.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3

from bench.target import AuditCheck

REGION = "eu-central-1"
# Throw-away credentials for the local S3 endpoint (moto); never real ones.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


def s3_client(endpoint: str, region: str = REGION) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_AWS_ENV["AWS_SESSION_TOKEN"],
    )


def decode_object(key: str, body: bytes) -> list[dict[str, Any]]:
    if key.endswith(".ndjson.gz"):
        text = gzip.decompress(body).decode()
        return [json.loads(line) for line in text.splitlines() if line]
    if key.endswith(".json"):
        return [json.loads(body)]
    raise ValueError(f"not an audit object key: {key}")


def create_bucket(endpoint: str, bucket: str, region: str) -> None:
    s3_client(endpoint, region).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
    )


@dataclass
class AuditReader:
    """Accumulates records of one bucket/prefix, fetching only objects not seen yet."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    keys: set[str] = field(default_factory=set)
    ids: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def refresh(self) -> None:
        s3 = s3_client(self.endpoint, self.region)
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key in self.keys:
                    continue
                body = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                try:
                    records = decode_object(key, body)
                except ValueError as exc:
                    raise ValueError(f"audit object {key} does not decode: {exc}") from exc
                self.keys.add(key)
                for record in records:
                    self.ids[str(record.get("requestId"))] += 1
                    self.outcomes[str(record.get("outcome"))] += 1

    def check(self, expected_ids: list[str]) -> AuditCheck:
        wanted = set(expected_ids)
        found = [i for i in wanted if self.ids[i] > 0]
        missing = sorted(wanted - set(found))
        return AuditCheck(
            expected=len(wanted),
            found=len(found),
            duplicates=sum(n - 1 for n in self.ids.values() if n > 1),
            objects=len(self.keys),
            outcomes=dict(self.outcomes),
            missing_sample=missing[:10],
        )


def wait_for_audit(reader: AuditReader, expected_ids: list[str], timeout_s: float) -> AuditCheck:
    """Poll S3 until every expected id has a record or `timeout_s` has passed."""
    started = time.monotonic()
    while True:
        reader.refresh()
        result = reader.check(expected_ids)
        result.waited_s = time.monotonic() - started
        if result.complete or result.waited_s > timeout_s:
            return result
        time.sleep(0.5)
