"""AuditTrail.accept: one record per request, whatever the record holds.

A record that cannot be encoded (a lone surrogate, an integer beyond 64 bits,
a type orjson does not know) is replaced by a minimal record, which is spooled
and shipped to S3 like any other: nothing is served unrecorded.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from sidecar_audit.audit_trail import AuditTrail
from sidecar_audit.config import Config
from sidecar_audit.proxy import Finished
from sidecar_audit.record import encode_record, salvage
from tests.audit_s3 import create_bucket, wait_for_records

pytestmark = pytest.mark.timeout(60)


def finished(record: dict[str, Any]) -> Finished:
    return Finished(record, 1764188351.5, "/v1/chat/completions", 200, "completed", 0.1, None, None)


def full_record(request_id: str, poison: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "requestId": request_id,
        "timestamp": "2026-11-28T10:00:00.000001Z",
        "method": "POST",
        "path": "/v1/chat/completions",
        "source": "app",
        "userId": "alice",
        "requestType": "chat",
        "projectId": "app",
        "statusCode": 200,
        "request": {"bytes": 12, "sha256": "ab" * 32, "body": poison},
        "response": {"bytes": 34, "sha256": "cd" * 32},
        "sidecar": {"version": "0.1.0", "host": "h", "taskArn": None, "pid": 1},
    }


POISONS = {
    "lone surrogate": "\ud800",
    "integer beyond 64 bits": 2**70,
    "unknown type": object(),
    "surrogate key": {"\udfff": 1},
}


def test_salvage_keeps_ids_identity_status_sizes_and_hashes() -> None:
    for name, poison in POISONS.items():
        record = full_record("rid-1", poison)
        with pytest.raises(TypeError):
            encode_record(record)
        minimal = salvage(record, "encoding failed")
        encode_record(minimal)  # always encodable
        assert minimal["requestId"] == "rid-1", name
        assert (minimal["userId"], minimal["statusCode"]) == ("alice", 200)
        assert minimal["request"] == {"bytes": 12, "sha256": "ab" * 32}
        assert minimal["response"] == {"bytes": 34}
        assert (minimal["outcome"], minimal["minimal"]) == ("sidecar_error", True)
        assert minimal["timestamp"] == "2026-11-28T10:00:00.000001Z"


def test_salvage_of_garbage_is_still_a_record() -> None:
    minimal = salvage({"requestId": "\ud800x", "statusCode": "200", "sidecar": {"pid": 2**80}}, "x")
    assert encode_record(minimal)
    assert minimal["statusCode"] == 0 and minimal["requestId"] == "?x"


async def test_a_record_that_cannot_be_encoded_is_shipped_as_a_minimal_record(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    create_bucket(moto_server, bucket)
    config = Config.from_env(
        {
            "AUDIT_BUCKET": bucket,
            "AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
            "AUDIT_FLUSH_INTERVAL_S": "0.2",
        }
    )
    fatal: list[str] = []
    trail = await AuditTrail.open(config, on_put=lambda s, ok: None, on_fatal=fatal.append)
    ids = [f"poison-{i}" for i in range(len(POISONS))] + ["healthy"]
    try:
        for request_id, poison in zip(ids, [*POISONS.values(), "fine"], strict=True):
            trail.accept(finished(full_record(request_id, poison)))
    finally:
        await trail.close(10)
    found = wait_for_records(moto_server, bucket, ids)
    by_id = {r["requestId"]: r for r in found.records}
    assert by_id["healthy"]["request"]["body"] == "fine"
    for request_id in ids[:-1]:
        assert by_id[request_id]["minimal"] is True
        assert by_id[request_id]["error"]["type"] == "record_failed"
    assert fatal == []
