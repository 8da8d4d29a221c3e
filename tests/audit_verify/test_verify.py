"""`central-llm-audit-verify` against trails written by the real sidecar into moto.

Each test runs the sidecar process in front of the vLLM stand-in with small
batches and a short digest interval, stops it (SIGTERM: the last digest is
written), then tampers with the bucket the way someone with write access to it
could, and runs the verify command as its own process:

- untouched → exit 0 (and every record carries writerId / seq);
- an edited record, a removed line, a deleted object, a deleted digest, a
  reordered chain, a forged unsigned digest where a key is configured, a
  record gap hidden by a consistently rewritten unsigned chain → exit 1, the
  S3 key named;
- records dropped by the spool-full `drop` policy → tombstoned: exit 0, counted;
- SIGKILL mid-batch, then a new process on the same spool → exit 0, one writer
  id, seqs continuing;
- `--table`: a record whose DynamoDB item is gone → exit 1, its request id named.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from central_llm_ops.audit_verify import item_key
from central_llm_ops.local_aws import ensure_table
from llm_audit.ingest import handler
from sidecar_audit.integrity.digest import envelope, sha256_hex
from tests.faults.load import run_load
from tests.faults.observe import logged
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import Sidecar, StartSidecar
from tests.standin_fixture import Standin

TRAIL = {"AUDIT_BATCH_MAX_RECORDS": "4", "AUDIT_DIGEST_INTERVAL_S": "0.4"}


async def _trail(
    start_sidecar: StartSidecar, standin: Standin, requests: int = 24, **settings: str
) -> Sidecar:
    """Three waves of requests a few digest intervals apart, so the chain has several links."""
    sidecar = start_sidecar(standin.url, **{**TRAIL, **settings})
    for wave in range(3):
        load = await run_load(sidecar.url, requests // 3, 4, f"trail{wave}")
        assert all(a.status == 200 for a in load.answers)
        await asyncio.sleep(1.0)
    assert sidecar.terminate() == 0
    return sidecar


def _verify(sidecar: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL": sidecar.moto_url}
    command = [sys.executable, "-m", "central_llm_ops.audit_verify", "--bucket", sidecar.bucket]
    return subprocess.run(
        [*command, "--since", "1h", "--grace", "0", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _s3(sidecar: Sidecar) -> Any:
    return boto3.client("s3", endpoint_url=sidecar.moto_url)


def _keys(sidecar: Sidecar, prefix: str) -> list[str]:
    pages = (
        _s3(sidecar).get_paginator("list_objects_v2").paginate(Bucket=sidecar.bucket, Prefix=prefix)
    )
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _get(sidecar: Sidecar, key: str) -> bytes:
    return _s3(sidecar).get_object(Bucket=sidecar.bucket, Key=key)["Body"].read()


def _put(sidecar: Sidecar, key: str, body: bytes) -> None:
    _s3(sidecar).put_object(Bucket=sidecar.bucket, Key=key, Body=body)


def _digest_keys(sidecar: Sidecar) -> list[str]:
    return _keys(sidecar, "logs-digest/")


def _listing_digest(sidecar: Sidecar, object_key: str) -> str:
    for key in _digest_keys(sidecar):
        body = orjson.loads(_get(sidecar, key))["digest"]
        if any(o["key"] == object_key for o in body["objects"]):
            return key
    raise AssertionError(f"no digest lists {object_key}")


def _lines(sidecar: Sidecar, key: str) -> list[bytes]:
    return gzip.decompress(_get(sidecar, key)).split(b"\n")[:-1]


def _put_lines(sidecar: Sidecar, key: str, lines: list[bytes]) -> None:
    _put(sidecar, key, gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0))


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return orjson.loads(done.stdout)


def _middle_object(sidecar: Sidecar) -> str:
    keys = _keys(sidecar, "logs/")
    assert len(keys) >= 4, keys
    return keys[len(keys) // 2]


async def test_an_untouched_signed_trail_verifies(
    standin_session: Standin, start_sidecar: StartSidecar, key_pair: tuple[Path, Path]
) -> None:
    private, public = key_pair
    sidecar = await _trail(
        start_sidecar, standin_session, AUDIT_DIGEST_SIGNING_KEY_FILE=str(private)
    )
    done = _verify(sidecar, "--public-key", str(public), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = _json(done)
    assert report["ok"] and report["problems"] == []
    assert report["stats"]["records"] == 24
    assert report["stats"]["objects"] == len(_keys(sidecar, "logs/"))
    records = sidecar.audit().records
    [writer] = {r["writerId"] for r in records}
    assert sorted(r["seq"] for r in records) == list(range(24))
    assert all(writer in key for key in _digest_keys(sidecar))


async def test_an_edited_record_is_named(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session)
    key = _middle_object(sidecar)
    lines = _lines(sidecar, key)
    record = orjson.loads(lines[1])
    record["statusCode"] = 404
    lines[1] = orjson.dumps(record)
    _put_lines(sidecar, key, lines)
    done = _verify(sidecar)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"modified: {key}: SHA-256 differs" in done.stdout
    assert record["requestId"] in done.stdout


async def test_a_removed_line_is_named(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session)
    key = _middle_object(sidecar)
    lines = _lines(sidecar, key)
    _put_lines(sidecar, key, lines[:1] + lines[2:])
    done = _verify(sidecar)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"truncated: {key}:" in done.stdout
    assert f"{len(lines) - 1} of {len(lines)} records left" in done.stdout


async def test_a_deleted_object_is_named(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session)
    key = _middle_object(sidecar)
    _s3(sidecar).delete_object(Bucket=sidecar.bucket, Key=key)
    done = _verify(sidecar, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    problems = _json(done)["problems"]
    assert [(p["kind"], p["key"]) for p in problems] == [("deleted", key)]
    assert _json(done)["stats"]["recordsMissing"] == 4


async def test_a_deleted_digest_breaks_the_chain(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session)
    key = _middle_object(sidecar)
    digest = _listing_digest(sidecar, key)
    digests = _digest_keys(sidecar)
    assert digests[-1] != digest, "the object should not be in the last digest"
    _s3(sidecar).delete_object(Bucket=sidecar.bucket, Key=digest)
    done = _verify(sidecar)
    assert done.returncode == 1, done.stdout + done.stderr
    following = digests[digests.index(digest) + 1]
    assert f"chain: {following}: digests" in done.stdout
    assert f"unlisted: {key}:" in done.stdout


async def test_a_reordered_chain_is_named(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session)
    digests = _digest_keys(sidecar)
    assert len(digests) >= 3, digests
    first, second = digests[0], digests[1]
    first_bytes, second_bytes = _get(sidecar, first), _get(sidecar, second)
    _put(sidecar, first, second_bytes)
    _put(sidecar, second, first_bytes)
    done = _verify(sidecar)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"chain: {first}: digest key does not match" in done.stdout
    assert f"chain: {second}: digest key does not match" in done.stdout


async def test_a_forged_unsigned_digest_is_refused_when_a_key_is_configured(
    standin_session: Standin, start_sidecar: StartSidecar, key_pair: tuple[Path, Path]
) -> None:
    """Someone who can write the bucket (but not sign) hides an object: a new, unsigned
    digest that leaves it out, linked correctly to its predecessor."""
    private, public = key_pair
    sidecar = await _trail(
        start_sidecar, standin_session, AUDIT_DIGEST_SIGNING_KEY_FILE=str(private)
    )
    key = _middle_object(sidecar)
    digest = _listing_digest(sidecar, key)
    body = orjson.loads(_get(sidecar, digest))["digest"]
    body["objects"] = [o for o in body["objects"] if o["key"] != key]
    _put(sidecar, digest, envelope(body, None))
    _s3(sidecar).delete_object(Bucket=sidecar.bucket, Key=key)
    done = _verify(sidecar, "--public-key", str(public))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"signature: {digest}: unsigned digest, but a key is configured" in done.stdout
    # Without the key, a chain that was signed and turns unsigned is still refused.
    done = _verify(sidecar)
    assert f"signature: {digest}: unsigned digest in a signed chain" in done.stdout


async def test_a_record_gap_is_named_even_when_the_unsigned_chain_is_rewritten(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    """Delete an object and rewrite every digest from the one listing it, consistently:
    the chain holds, only the writer's seqs show the hole."""
    sidecar = await _trail(start_sidecar, standin_session)
    key = _middle_object(sidecar)
    digests = _digest_keys(sidecar)
    start = digests.index(_listing_digest(sidecar, key))
    _s3(sidecar).delete_object(Bucket=sidecar.bucket, Key=key)
    previous_sha = None
    for index in range(start, len(digests)):
        body = orjson.loads(_get(sidecar, digests[index]))["digest"]
        body["objects"] = [o for o in body["objects"] if o["key"] != key]
        if previous_sha is not None:
            body["previousDigestSha256"] = previous_sha
        data = envelope(body, None)
        _put(sidecar, digests[index], data)
        previous_sha = sha256_hex(data)
    done = _verify(sidecar, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    [gap] = _json(done)["problems"]
    assert gap["kind"] == "gap"
    assert "seqs" in gap["detail"] and "missing" in gap["detail"]
    assert gap["key"].startswith("logs/")
    assert _json(done)["stats"]["recordsMissing"] == 4


async def test_records_dropped_by_the_drop_policy_are_tombstoned_and_counted(
    standin_session: Standin, start_sidecar: StartSidecar, s3_cut: TcpCut
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        AWS_ENDPOINT_URL=s3_cut.url,
        AUDIT_SPOOL_MAX_BYTES="12000",
        AUDIT_SPOOL_FULL_POLICY="drop",
        **TRAIL,
    )
    s3_cut.cut()
    load = await run_load(sidecar.url, 20, 2, "drop")
    assert all(a.status == 200 for a in load.answers)
    dropped = len(logged(sidecar.log_lines(), "audit record dropped")) + len(
        logged(sidecar.log_lines(), "audit record dropped: the spool cannot take records")
    )
    assert dropped > 0
    s3_cut.restore()
    await asyncio.sleep(1.0)
    assert sidecar.terminate() == 0
    done = _verify(sidecar, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    stats = _json(done)["stats"]
    assert stats["recordsDropped"] == dropped
    assert stats["records"] + dropped == 20


async def test_sigkill_mid_batch_then_recovery_still_verifies(
    standin_session: Standin, start_sidecar: StartSidecar, key_pair: tuple[Path, Path]
) -> None:
    private, public = key_pair
    sidecar = start_sidecar(
        standin_session.url,
        AUDIT_BATCH_MAX_RECORDS="50",
        AUDIT_FLUSH_INTERVAL_S="60",
        AUDIT_DIGEST_INTERVAL_S="0.4",
        AUDIT_DIGEST_SIGNING_KEY_FILE=str(private),
    )
    first = await run_load(sidecar.url, 30, 6, "before-kill")
    sidecar.kill()  # 30 records in an open segment, none shipped
    sidecar.restart(AUDIT_FLUSH_INTERVAL_S="0.3")
    second = await run_load(sidecar.url, 10, 5, "after-kill")
    assert sidecar.terminate() == 0
    answered = [a for a in [*first.answers, *second.answers] if a.status == 200]
    records = sidecar.audit().records
    assert {r["requestId"] for r in records} >= {a.request_id for a in answered}
    [writer] = {r["writerId"] for r in records}
    assert sorted(r["seq"] for r in records) == list(range(len(records)))
    done = _verify(sidecar, "--public-key", str(public), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _json(done)["stats"]["records"] == len(records)
    assert writer


async def test_a_record_without_its_dynamodb_item_is_named(
    standin_session: Standin, start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingestion (the Lambda's handler, run here) indexes every object; one item is then
    deleted: `--table` names its object, line and request id."""
    sidecar = await _trail(start_sidecar, standin_session, requests=12)
    table = f"audit-{uuid.uuid4().hex[:8]}"
    dynamodb = boto3.client("dynamodb", endpoint_url=sidecar.moto_url)
    ensure_table(dynamodb, table)
    monkeypatch.setenv("AWS_ENDPOINT_URL", sidecar.moto_url)
    monkeypatch.setenv("TABLE_NAME", table)
    for key in _keys(sidecar, "logs/"):
        event = {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": sidecar.bucket}, "object": {"key": key}},
                }
            ]
        }
        handler(event, None)
    assert _verify(sidecar, "--table", table).returncode == 0
    record = sidecar.audit().records[5]
    dynamodb.delete_item(TableName=table, Key=item_keys_as_attributes(record))
    done = _verify(sidecar, "--table", table, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    [problem] = _json(done)["problems"]
    assert problem["kind"] == "item" and problem["requestIds"] == [record["requestId"]]
    assert problem["key"].startswith("logs/") and "line" in problem["detail"]
    assert _json(done)["stats"]["itemsMissing"] == 1


def item_keys_as_attributes(record: dict[str, Any]) -> dict[str, Any]:
    key = item_key(record)
    return {"id": {"S": key["id"]}, "createdAt": {"S": key["createdAt"]}}
