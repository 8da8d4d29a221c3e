"""`python -m central_llm_ops.reconcile` against trails the real sidecar wrote into moto.

The reconciliation runs as its own process (as the scheduled ECS task does)
over a window ending now (`--settle 0`, the trail was just written), and its
stdout is read as CloudWatch Logs would: the report line, then one EMF line
whose three counts the stack's alarms watch. Untouched: all zero, exit 0.
Tampered (an edited record) and un-indexed (no items in the table): exit 1,
AuditObjectsTampered and AuditItemsMissing count them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import orjson

from central_llm_ops import reconcile
from central_llm_ops.local_aws import ensure_table
from tests.audit_verify.test_verify import _keys, _lines, _put_lines, _trail
from tests.sidecar_fixture import Sidecar, StartSidecar
from tests.standin_fixture import Standin


def _reconcile(sidecar: Sidecar, *args: str, **env: str) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "central_llm_ops.reconcile", "--settle", "0", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "AWS_ENDPOINT_URL": sidecar.moto_url,
            "AUDIT_BUCKET": sidecar.bucket,
            **env,
        },
        timeout=120,
        check=False,
    )
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert lines, done.stderr
    return done.returncode, lines


def _emf(lines: list[dict[str, Any]]) -> dict[str, Any]:
    [emf] = [line for line in lines if "_aws" in line]
    [declared] = emf["_aws"]["CloudWatchMetrics"]
    assert declared["Namespace"] == "CentralLLM/Audit"
    assert declared["Dimensions"] == [["AuditBucket"]]
    return emf


def test_window_is_the_hour_that_ended_the_settle_time_ago() -> None:
    now = datetime(2026, 11, 28, 10, 7, 30, tzinfo=UTC)
    since, until = reconcile.window(now, 900, 3600)
    assert (since, until) == (
        datetime(2026, 11, 28, 8, 52, 30, tzinfo=UTC),
        datetime(2026, 11, 28, 9, 52, 30, tzinfo=UTC),
    )


async def test_an_untouched_trail_publishes_zeros(
    standin_session: Standin, start_sidecar: StartSidecar, key_pair: tuple[Path, Path]
) -> None:
    private, public = key_pair
    sidecar = await _trail(
        start_sidecar, standin_session, AUDIT_DIGEST_SIGNING_KEY_FILE=str(private)
    )
    code, lines = _reconcile(sidecar, "--public-key", str(public))
    assert code == 0, lines
    [report] = [line for line in lines if line.get("event") == "audit_reconcile"]
    assert report["ok"] is True and report["problems"] == []
    assert report["stats"]["records"] == 24
    emf = _emf(lines)
    assert emf["AuditBucket"] == sidecar.bucket
    assert {name: emf[name] for name in reconcile.METRICS} == dict.fromkeys(reconcile.METRICS, 0)


async def test_tampered_and_unindexed_records_are_counted(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session, requests=12)
    table = f"audit-{uuid.uuid4().hex[:8]}"
    ensure_table(boto3.client("dynamodb", endpoint_url=sidecar.moto_url), table)
    key = _keys(sidecar, "logs/")[0]
    lines = _lines(sidecar, key)
    record = orjson.loads(lines[0])
    record["statusCode"] = 404
    _put_lines(sidecar, key, [orjson.dumps(record), *lines[1:]])

    code, out = _reconcile(sidecar, TABLE_NAME=table)
    assert code == 1, out
    [report] = [line for line in out if line.get("event") == "audit_reconcile"]
    assert any(p["kind"] == "modified" and p["key"] == key for p in report["problems"])
    emf = _emf(out)
    assert emf["AuditObjectsTampered"] >= 1
    assert emf["AuditItemsMissing"] == 12  # nothing was ingested into this table
    assert emf["AuditRecordsMissing"] == report["stats"]["recordsMissing"]


async def test_an_unreachable_bucket_publishes_only_that_the_check_failed(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = await _trail(start_sidecar, standin_session, requests=3)
    code, lines = _reconcile(sidecar, "--bucket", "no-such-bucket-" + uuid.uuid4().hex[:8])
    assert code == 2
    assert lines[0]["event"] == "audit_reconcile" and lines[0]["exitCode"] == 2
    failed = _emf(lines)  # nothing measured: no counts, only the failure, which alarms
    assert failed[reconcile.FAILED_METRIC] == 1
    assert not any(name in failed for name in reconcile.METRICS)
