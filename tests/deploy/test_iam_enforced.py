"""The IAM policies of ecs/policies/ are enough, and no more, for the real code under enforcement.

One moto server enforces IAM (`INITIAL_NO_AUTH_ACTION_COUNT`, see
tests/deploy/iam_enforced.py for how, and for what moto leaves unchecked:
non-S3 resources are treated as `*`, so only S3 is checked per resource).
The administrator creates what the stack would (versioned, owner-enforced
buckets notifying the ingestion queue, the table, the queue); then each part
runs as its own process with only its own policy's key:

- the sidecar (task role `ecs-task-audit-writer`) ships a request's record;
- the ingestion handler (`llm-audit-ingest`), invoked by the name the stack
  gives it, indexes versioned objects from an S3 event and from the SQS
  messages S3 sent, and archives them;
- `central-llm-audit-query` (ops role `audit-reader`) finds the item and its record;
- the execution role pulls from ECR and writes container logs;
- the scheduled reconciliation (`audit-reconcile`) and `central-llm-audit-verify`
  as the reader check a trail the sidecar wrote, items included.

The buckets have Object Lock on with a default retention, as the stack makes
them: the task's puts work under it, and its overwrite of a key leaves the
locked version as it was.

Negative cases: the task role can neither read nor delete audit objects nor
write outside the prefix; the reader cannot write; the ingestion fails
without each S3 permission it holds (so each is needed).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from central_llm_ops.audit_table import create_table_kwargs, load_definition
from central_llm_ops.ingest_sqs import sqs_event
from tests.deploy.iam_enforced import (
    ACCOUNT,
    REGION,
    Credentials,
    create_principal,
    enforcing_moto,
    render_policy,
    stack_values,
    without_action,
)
from tests.deploy.log_patterns import matches, metric_value
from tests.deploy.tools import ROOT, template
from tests.faults.load import MODEL
from tests.procs import free_port
from tests.sidecar_fixture import AUDIT_HEADERS, launch
from tests.standin_fixture import Standin

VALUES = stack_values()
AUDIT_BUCKET = VALUES["AuditBucketName"]
ARCHIVE_BUCKET = VALUES["ArchiveBucketName"]
PREFIX = VALUES["AuditPrefix"]
TABLE = VALUES["TableName"]
QUEUE = VALUES["IngestQueueName"]


def ingest_handler_name() -> str:
    """The handler as the stack configures the function (follows a rename by the generator)."""
    name: str = template()["Resources"]["IngestFunction"]["Properties"]["Handler"]
    return name


@dataclass(frozen=True)
class Enforced:
    admin: Credentials
    task: Credentials
    ingest: Credentials
    reader: Credentials
    execution: Credentials
    reconcile: Credentials
    queue_url: str
    queue_arn: str


@pytest.fixture(scope="module")
def enforced(proc_log_dir: Path) -> Iterator[Enforced]:
    with enforcing_moto("moto-iam", proc_log_dir) as admin:
        queue_url, queue_arn = _create_stack_resources(admin)
        yield Enforced(
            admin=admin,
            task=create_principal(admin, "task", render_policy("ecs-task-audit-writer")),
            ingest=create_principal(admin, "ingest", render_policy("llm-audit-ingest")),
            reader=create_principal(admin, "reader", render_policy("audit-reader")),
            execution=create_principal(admin, "execution", render_policy("ecs-task-execution")),
            reconcile=create_principal(admin, "reconcile", render_policy("audit-reconcile")),
            queue_url=queue_url,
            queue_arn=queue_arn,
        )


def _create_stack_resources(admin: Credentials) -> tuple[str, str]:
    s3 = admin.client("s3")
    for bucket in (AUDIT_BUCKET, ARCHIVE_BUCKET):
        s3.create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": REGION},
            ObjectOwnership="BucketOwnerEnforced",
            ObjectLockEnabledForBucket=True,
        )
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # The stack's default retention on the audit bucket (the sidecar's puts carry the
    # checksum header Object Lock asks for). Not on the archive: moto refuses every
    # CopyObject into a bucket with a default retention for want of a Content-MD5 header,
    # which a copy has no body to carry (docs/deployment.md: check the archive on the
    # first deployment).
    s3.put_object_lock_configuration(
        Bucket=AUDIT_BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    admin.client("dynamodb").create_table(**create_table_kwargs(load_definition(), TABLE))
    sqs = admin.client("sqs")
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=AUDIT_BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{PREFIX}/"}]}},
                }
            ]
        },
    )
    return queue_url, queue_arn


def _denied(call: Any) -> bool:
    try:
        call()
    except ClientError as exc:
        # moto answers JSON-protocol services with an XML error body that botocore
        # reports as code "403"; the status is the reliable part.
        error = exc.response["Error"]
        return error.get("Code") in {"AccessDenied", "AccessDeniedException"} or (
            exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            and "AccessDenied" in str(error.get("Message", ""))
        )
    return False


def _audit_keys(admin: Credentials) -> list[str]:
    listed = admin.client("s3").list_objects_v2(Bucket=AUDIT_BUCKET, Prefix=f"{PREFIX}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def _invoke(handler_env: dict[str, str], event: dict[str, Any]) -> dict[str, Any]:
    """One invocation of the ingestion handler in its own process, as the given principal."""
    env = {
        **handler_env,
        "TABLE_NAME": TABLE,
        "AUDIT_PREFIX": PREFIX,
        "ARCHIVE_BUCKET": ARCHIVE_BUCKET,
        "PYTHONPATH": f"{ROOT / 'lambda'}:{ROOT}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.deploy.run_handler", ingest_handler_name()],
        input=json.dumps(event),
        env=_child_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    outcome: dict[str, Any] = json.loads(lines[-1])
    outcome["logLines"] = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
    return outcome


def _metric_filters() -> dict[str, dict[str, Any]]:
    return {
        name: body["Properties"]
        for name, body in template()["Resources"].items()
        if body["Type"] == "AWS::Logs::MetricFilter"
    }


def _filter_values(outcome: dict[str, Any]) -> dict[str, float]:
    """Metric name -> value the stack's metric filters take from this invocation's log lines."""
    values: dict[str, float] = {}
    for props in _metric_filters().values():
        (transformation,) = props["MetricTransformations"]
        for line in outcome["logLines"]:
            if matches(props["FilterPattern"], line):
                name = transformation["MetricName"]
                values[name] = values.get(name, 0.0) + metric_value(
                    transformation["MetricValue"], line
                )
    return values


def _child_env(settings: dict[str, str]) -> dict[str, str]:
    """Only these settings and PATH/HOME: no AWS variable of the test process leaks in."""
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return base | {k: v for k, v in settings.items() if v != ""}


def _s3_event(key: str, version_id: str, size: int) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": AUDIT_BUCKET, "arn": f"arn:aws:s3:::{AUDIT_BUCKET}"},
                    "object": {"key": key, "size": size, "versionId": version_id},
                },
            }
        ]
    }


def _with_version(body: str, version: str) -> str:
    """S3's notification as real S3 sends it for a versioned bucket: moto leaves out
    `versionId`, which real S3 always includes there (and which makes the handler read
    with `VersionId`, the permission this test is about)."""
    event = json.loads(body)
    for record in event["Records"]:
        record["s3"]["object"].setdefault("versionId", version)
    return json.dumps(event)


def _items(admin: Credentials) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin.client("dynamodb").scan(TableName=TABLE)["Items"]
    return items


def _put_record(admin: Credentials, request_id: str) -> tuple[str, str, int]:
    """An audit object as the sidecar writes one per request; (key, versionId, size)."""
    now = time.gmtime()
    record = {
        "schemaVersion": 1,
        "requestId": request_id,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", now),
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": "",
        "source": "iam-test",
        "userId": "iam-user",
        "requestType": "chat",
        "projectId": "iam-test",
        "statusCode": 200,
        "latencyMs": 12.5,
        "outcome": "completed",
        "model": "m",
        "usage": None,
        "request": {"headers": {}, "body": {"messages": []}},
        "response": {"headers": {}, "body": {"choices": []}},
    }
    key = f"{PREFIX}/{time.strftime('%Y/%m/%d', now)}/{request_id}.json"
    body = json.dumps(record).encode()
    put = admin.client("s3").put_object(Bucket=AUDIT_BUCKET, Key=key, Body=body)
    return key, put["VersionId"], len(body)


# --- the sidecar, as the task role ------------------------------------------------


def test_sidecar_ships_with_the_task_policy(
    enforced: Enforced, standin: Standin, tmp_path: Path, proc_log_dir: Path
) -> None:
    port = free_port()
    env = {
        **enforced.task.env(),
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "METRICS_PORT": "0",
        "UPSTREAM_URL": standin.url,
        "AUDIT_BUCKET": AUDIT_BUCKET,
        "AUDIT_PREFIX": PREFIX,
        "AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "AUDIT_FLUSH_INTERVAL_S": "0.3",
        "EMF_INTERVAL_S": "0",
        "SHUTDOWN_GRACE_S": "5",
        "SHUTDOWN_SHIP_S": "10",
    }
    before = set(_audit_keys(enforced.admin))
    proc = launch(f"sidecar-iam-{port}", env, proc_log_dir, port)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers={"content-type": "application/json", **AUDIT_HEADERS},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            request_id = response.headers["x-request-id"]
            assert response.status == 200
        deadline = time.monotonic() + 30
        while set(_audit_keys(enforced.admin)) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        new = sorted(set(_audit_keys(enforced.admin)) - before)
        assert new, f"nothing shipped under the task policy:\n{proc.log()[-3000:]}"
        body = enforced.admin.client("s3").get_object(Bucket=AUDIT_BUCKET, Key=new[0])["Body"]
        assert request_id.encode() in _maybe_gunzip(body.read())
        # SIGTERM: the shipper drains and the writer's last digest goes to <prefix>-digest/.
        assert proc.stop(grace_s=30) == 0
        digests = enforced.admin.client("s3").list_objects_v2(
            Bucket=AUDIT_BUCKET, Prefix=f"{PREFIX}-digest/"
        )
        assert digests.get("KeyCount", 0) >= 1, proc.log()[-3000:]
        assert "AccessDenied" not in proc.log()
    finally:
        proc.stop()


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_task_policy_cannot_read_delete_or_write_elsewhere(enforced: Enforced) -> None:
    key, version, _ = _put_record(enforced.admin, "task-negative-0001")
    s3 = enforced.task.client("s3")
    assert _denied(lambda: s3.get_object(Bucket=AUDIT_BUCKET, Key=key))
    assert _denied(lambda: s3.get_object(Bucket=AUDIT_BUCKET, Key=key, VersionId=version))
    assert _denied(lambda: s3.delete_object(Bucket=AUDIT_BUCKET, Key=key))
    assert _denied(lambda: s3.delete_object(Bucket=AUDIT_BUCKET, Key=key, VersionId=version))
    assert _denied(lambda: s3.put_object(Bucket=AUDIT_BUCKET, Key="elsewhere/x.json", Body=b"{}"))
    assert _denied(lambda: s3.get_object(Bucket=AUDIT_BUCKET, Key=f"{PREFIX}-digest/x.json"))
    assert _denied(lambda: s3.put_object(Bucket=ARCHIVE_BUCKET, Key=key, Body=b"{}"))
    assert _denied(lambda: s3.list_objects_v2(Bucket=AUDIT_BUCKET))
    assert _denied(lambda: enforced.task.client("dynamodb").scan(TableName=TABLE))
    # Nothing that removes a locked version, even asking to bypass governance mode. (moto
    # files PutObjectRetention under s3:PutObject, so that the task may not shorten a lock
    # is shown statically: test_stack_integrity.py, no policy grants it.)
    assert _denied(
        lambda: s3.delete_object(
            Bucket=AUDIT_BUCKET, Key=key, VersionId=version, BypassGovernanceRetention=True
        )
    )
    # Its one permission works, so the denials above are the policy's, not a broken key.
    s3.put_object(Bucket=AUDIT_BUCKET, Key=f"{PREFIX}/probe/ok.json", Body=b"{}")
    # Overwriting a key makes a new version; the locked one keeps its bytes (and verify
    # compares digests with the current version, so the change shows there).
    original = enforced.admin.client("s3").get_object(Bucket=AUDIT_BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=AUDIT_BUCKET, Key=key, Body=b"{}")
    kept = enforced.admin.client("s3").get_object(Bucket=AUDIT_BUCKET, Key=key, VersionId=version)
    assert kept["Body"].read() == original
    assert kept["ObjectLockMode"] == "GOVERNANCE"


# --- the ingestion Lambda -------------------------------------------------------


def test_lambda_ingests_a_versioned_s3_event_and_archives(enforced: Enforced) -> None:
    key, version, size = _put_record(enforced.admin, "iam-s3-event-0001")
    outcome = _invoke(enforced.ingest.env(), _s3_event(key, version, size))
    assert "answer" in outcome, outcome
    ids = {item["requestId"]["S"] for item in _items(enforced.admin)}
    assert "iam-s3-event-0001" in ids
    # The stack's metric filters read this invocation's real summary line.
    assert _filter_values(outcome) == {"AuditItemsIngested": 1.0}
    archived = enforced.admin.client("s3").get_object(Bucket=ARCHIVE_BUCKET, Key=key)
    assert json.loads(archived["Body"].read())["requestId"] == "iam-s3-event-0001"


def test_lambda_ingests_the_sqs_messages_s3_sent(enforced: Enforced) -> None:
    key, version, _ = _put_record(enforced.admin, "iam-sqs-event-0001")
    sqs = enforced.ingest.client("sqs")  # the event source mapping polls with the function's role
    sqs.get_queue_attributes(QueueUrl=enforced.queue_url, AttributeNames=["QueueArn"])
    wanted: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not wanted and time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=enforced.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            if key.replace("/", "%2F") in message["Body"] or key in message["Body"]:
                wanted.append(message)
            else:  # earlier tests' objects and S3's test event: not this test's business
                sqs.change_message_visibility(
                    QueueUrl=enforced.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
    assert wanted, "S3 sent no notification for the object"
    for message in wanted:
        message["Body"] = _with_version(message["Body"], version)
    outcome = _invoke(enforced.ingest.env(), sqs_event(wanted, enforced.queue_arn))
    assert outcome.get("answer") == {"batchItemFailures": []}, outcome
    assert _filter_values(outcome) == {"AuditItemsIngested": float(len(wanted))}
    for message in wanted:
        sqs.delete_message(QueueUrl=enforced.queue_url, ReceiptHandle=message["ReceiptHandle"])
    ids = {item["requestId"]["S"] for item in _items(enforced.admin)}
    assert "iam-sqs-event-0001" in ids


@pytest.mark.parametrize(
    "action", ["s3:GetObjectVersion", "s3:PutObject", "dynamodb:BatchWriteItem"]
)
def test_lambda_fails_without_each_permission_it_holds(enforced: Enforced, action: str) -> None:
    """Each permission is needed. Not `s3:PutObjectAcl`: moto does not ask for it when a
    copy carries a canned ACL, real S3 does (the handler's archive copy sends
    `bucket-owner-full-control`; with the bucket's ACLs disabled by `BucketOwnerEnforced`
    that is the only ACL S3 accepts, so the grant cannot open anything)."""
    name = "ingest-without-" + action.replace(":", "-")
    trimmed = without_action(render_policy("llm-audit-ingest"), action)
    principal = create_principal(enforced.admin, name, trimmed)
    request_id = f"iam-minimal-{action.split(':')[1].lower()}"
    key, version, size = _put_record(enforced.admin, request_id)
    outcome = _invoke(principal.env(), _s3_event(key, version, size))
    assert outcome.get("raised") == "IngestFailed", outcome
    # ... and the failure-metric filter (IngestFailuresAlarm) counts it.
    assert _filter_values(outcome)["AuditIngestFailedUnits"] >= 1, outcome["logLines"]


# --- the operators' read-only role ---------------------------------------------------


def test_query_tool_reads_with_the_reader_policy(enforced: Enforced) -> None:
    key, version, size = _put_record(enforced.admin, "iam-reader-0001")
    assert "answer" in _invoke(enforced.ingest.env(), _s3_event(key, version, size))
    env = _child_env({**enforced.reader.env(), "TABLE_NAME": TABLE})
    query = [sys.executable, "-m", "central_llm_ops.audit_query"]
    listed = subprocess.run(
        [*query, "user", "iam-user", "--since", "1h", "--format", "jsonl"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "iam-reader-0001" in listed.stdout
    one = subprocess.run(
        [*query, "request", "iam-reader-0001", "--project", "iam-test", "--format", "jsonl"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["record"]["requestId"] == "iam-reader-0001"


def test_reader_cannot_write_or_delete(enforced: Enforced) -> None:
    key, _, _ = _put_record(enforced.admin, "iam-reader-neg-0001")
    s3 = enforced.reader.client("s3")
    dynamodb = enforced.reader.client("dynamodb")
    assert _denied(lambda: s3.put_object(Bucket=AUDIT_BUCKET, Key=key, Body=b"{}"))
    assert _denied(lambda: s3.delete_object(Bucket=AUDIT_BUCKET, Key=key))
    assert _denied(lambda: s3.get_object(Bucket=ARCHIVE_BUCKET, Key=key))
    item = {"id": {"S": "project#x"}, "createdAt": {"S": "t#x"}}
    assert _denied(lambda: dynamodb.put_item(TableName=TABLE, Item=item))
    assert _denied(lambda: dynamodb.delete_item(TableName=TABLE, Key=item))


# --- the reconciliation, and verify as the reader ------------------------------------


def _ship_trail(
    enforced: Enforced, standin: Standin, spool: Path, proc_log_dir: Path, requests: int
) -> None:
    """The sidecar, as the task role, answers `requests` requests and stops (last digest)."""
    port = free_port()
    env = {
        **enforced.task.env(),
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "METRICS_PORT": "0",
        "UPSTREAM_URL": standin.url,
        "AUDIT_BUCKET": AUDIT_BUCKET,
        "AUDIT_PREFIX": PREFIX,
        "AUDIT_SPOOL_DIR": str(spool),
        "AUDIT_FLUSH_INTERVAL_S": "0.3",
        "AUDIT_DIGEST_INTERVAL_S": "0.5",
        "EMF_INTERVAL_S": "0",
        "SHUTDOWN_GRACE_S": "5",
        "SHUTDOWN_SHIP_S": "10",
    }
    proc = launch(f"sidecar-trail-{port}", env, proc_log_dir, port)
    try:
        for _ in range(requests):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps(
                    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                ).encode(),
                headers={"content-type": "application/json", **AUDIT_HEADERS},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        assert proc.stop(grace_s=30) == 0, proc.log()[-3000:]
    finally:
        proc.stop()


def _ingest_all_batches(enforced: Enforced) -> None:
    """Index every batch object the sidecars wrote, as the ingestion Lambda does."""
    s3 = enforced.admin.client("s3")
    for key in _audit_keys(enforced.admin):
        if key.endswith(".ndjson.gz"):
            head = s3.head_object(Bucket=AUDIT_BUCKET, Key=key)
            event = _s3_event(key, head["VersionId"], head["ContentLength"])
            assert "answer" in _invoke(enforced.ingest.env(), event)


def _run_ops(module: str, principal: Credentials, *args: str, **env: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=_child_env({**principal.env(), **env}),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_reconciliation_and_verify_run_with_their_policies(
    enforced: Enforced, standin: Standin, tmp_path: Path, proc_log_dir: Path
) -> None:
    _ship_trail(enforced, standin, tmp_path / "spool", proc_log_dir, requests=3)
    _ingest_all_batches(enforced)
    settings = {"AUDIT_BUCKET": AUDIT_BUCKET, "AUDIT_PREFIX": PREFIX, "TABLE_NAME": TABLE}

    done = _run_ops("central_llm_ops.reconcile", enforced.reconcile, "--settle", "0", **settings)
    assert done.returncode == 0, done.stdout + done.stderr
    report, emf = (json.loads(line) for line in done.stdout.splitlines())
    assert report["stats"]["records"] >= 3 and report["problems"] == []
    assert [emf[name] for name in ("AuditRecordsMissing", "AuditObjectsTampered")] == [0, 0]
    assert emf["AuditItemsMissing"] == 0

    # With a signing key configured, verify fetches its public key (kms:GetPublicKey) and
    # counts these unsigned digests as tampered: exit 1 with metrics, not an AWS error.
    key = enforced.admin.client("kms").create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")[
        "KeyMetadata"
    ]["Arn"]
    signed = {**settings, "AUDIT_DIGEST_KMS_KEY_ID": key}
    done = _run_ops("central_llm_ops.reconcile", enforced.reconcile, "--settle", "0", **signed)
    assert done.returncode == 1, done.stdout + done.stderr
    report, emf = (json.loads(line) for line in done.stdout.splitlines())
    assert {p["kind"] for p in report["problems"]} == {"signature"}
    assert emf["AuditObjectsTampered"] >= 1

    # The operators' reader role runs verify over the same trail.
    done = _run_ops(
        "central_llm_ops.audit_verify", enforced.reader,
        "--bucket", AUDIT_BUCKET, "--since", "1h", "--grace", "0", "--table", TABLE,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_reconcile_policy_reads_only(enforced: Enforced) -> None:
    key, version, _ = _put_record(enforced.admin, "reconcile-neg-0001")
    s3 = enforced.reconcile.client("s3")
    assert s3.get_object(Bucket=AUDIT_BUCKET, Key=key)["Body"].read()
    assert _denied(lambda: s3.put_object(Bucket=AUDIT_BUCKET, Key=key, Body=b"{}"))
    assert _denied(lambda: s3.delete_object(Bucket=AUDIT_BUCKET, Key=key, VersionId=version))
    assert _denied(lambda: s3.get_object(Bucket=ARCHIVE_BUCKET, Key=key))
    item = {"id": {"S": "project#x"}, "createdAt": {"S": "t#x"}}
    assert _denied(
        lambda: enforced.reconcile.client("dynamodb").put_item(TableName=TABLE, Item=item)
    )
    assert _denied(lambda: enforced.reconcile.client("dynamodb").scan(TableName=TABLE))
    kms = enforced.reconcile.client("kms")
    assert _denied(
        lambda: kms.sign(
            KeyId="alias/any", Message=b"x" * 32, MessageType="DIGEST",
            SigningAlgorithm="ECDSA_SHA_256",
        )
    )  # fmt: skip


# --- the execution role ------------------------------------------------------------


def test_execution_role_pulls_images_and_writes_logs(enforced: Enforced) -> None:
    """What the ECS agent does with the execution role, each call made for real."""
    admin_ecr = enforced.admin.client("ecr")
    repository = VALUES["VllmRepositoryName"]
    admin_ecr.create_repository(repositoryName=repository)
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    )
    admin_ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="t1")
    log_group = VALUES["ServiceLogGroupName"]
    enforced.admin.client("logs").create_log_group(logGroupName=log_group)

    ecr = enforced.execution.client("ecr")
    assert ecr.get_authorization_token()["authorizationData"]
    images = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": "t1"}])
    assert images["images"]
    logs = enforced.execution.client("logs")
    logs.create_log_stream(logGroupName=log_group, logStreamName="sidecar/audit-sidecar/1")
    logs.put_log_events(
        logGroupName=log_group,
        logStreamName="sidecar/audit-sidecar/1",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "{}"}],
    )
    assert _denied(lambda: ecr.put_image(repositoryName=repository, imageManifest=manifest))
    assert _denied(lambda: enforced.execution.client("s3").list_buckets())


# --- what moto cannot check, pinned statically --------------------------------------


def test_non_s3_resources_name_the_stack() -> None:
    """moto treats non-S3 resources as `*`; their scoping is checked here instead."""
    for name in (
        "ecs-task-audit-writer",
        "ecs-task-protection",
        "ecs-task-execution",
        "llm-audit-ingest",
        "audit-reader",
        "audit-reconcile",
    ):
        policy = render_policy(name)
        for statement in policy["Statement"]:
            resources = statement["Resource"]
            resources = [resources] if isinstance(resources, str) else resources
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            if resources == ["*"]:
                # The only unscopeable action: ECR's registry-wide login token.
                assert actions == ["ecr:GetAuthorizationToken"], (name, statement)
                continue
            for resource in resources:
                assert resource.startswith("arn:aws:"), (name, resource)
                assert f":{REGION}:{ACCOUNT}:" in resource or resource.startswith(
                    "arn:aws:s3:::"
                ), (name, resource)
            assert all(a.split(":")[0] == resources[0].split(":")[2] for a in actions), statement


def test_every_policy_file_is_tested_and_in_the_stack() -> None:
    files = {p.stem for p in (ROOT / "ecs" / "policies").glob("*.json")}
    assert files == {
        "ecs-task-audit-writer",
        "ecs-task-protection",  # tests/deploy/test_task_protection_iam.py
        "ecs-task-execution",
        "llm-audit-ingest",
        "audit-reader",
        "audit-reconcile",
    }
    rendered = json.dumps(template())
    for name in files:
        assert f'"PolicyName": "{name}"' in rendered, name
