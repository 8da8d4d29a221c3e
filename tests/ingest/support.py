"""Helpers for the ingestion tests: records, audit objects, events from fixtures, table reads."""

from __future__ import annotations

import copy
import gzip
import json
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from boto3.dynamodb.types import TypeDeserializer

HERE = Path(__file__).parent
BASE_RECORD = json.loads((HERE / "records" / "chat_stream.json").read_text())


def record(**overrides: Any) -> dict[str, Any]:
    """A full schema-v1 record (RECORD.md) with top-level fields replaced."""
    out = copy.deepcopy(BASE_RECORD)
    out.update(overrides)
    return out


def batch_body(lines: Iterable[Mapping[str, Any] | bytes]) -> bytes:
    """A gzip'd NDJSON batch; bytes are written as raw lines (for poisoned ones)."""
    raw = [line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines]
    return gzip.compress(b"".join(line + b"\n" for line in raw))


def put_batch(s3: Any, bucket: str, key: str, lines: Iterable[Mapping[str, Any] | bytes]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=batch_body(lines))


def put_single(s3: Any, bucket: str, key: str, rec: Mapping[str, Any]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(rec).encode())


def load_event(name: str, **values: str) -> dict[str, Any]:
    """An event fixture from events/, `${name}` placeholders filled in.

    `key` (and `key_*`) values are form-encoded the way S3 writes keys in events.
    """
    text = (HERE / "events" / name).read_text()
    filled = {
        k: quote_plus(v, safe="/") if k == "key" or k.startswith("key_") else v
        for k, v in values.items()
    }
    event: dict[str, Any] = json.loads(string.Template(text).substitute(filled))
    return event


def table_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of the table, as plain Python values, in key order."""
    plain = TypeDeserializer().deserialize
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):
        items.extend({k: plain(v) for k, v in item.items()} for item in page["Items"])
    return sorted(items, key=lambda i: (i["id"], i["createdAt"]))


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in captured output (every line must be JSON)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
