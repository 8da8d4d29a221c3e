"""The one table definition, the local resource helper, and the Lambda's packaging."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from central_llm_ops.audit_format import COLUMNS
from central_llm_ops.audit_table import create_table_kwargs, load_definition
from central_llm_ops.local_aws import NOTIFICATION_ID, ensure_audit_resources
from tests.conftest import AWS_TEST_ENV
from tests.ingest.conftest import Stack, clients

ROOT = Path(__file__).resolve().parents[2]


def key_schema(schema: list[dict[str, str]]) -> tuple[str, ...]:
    return tuple(k["AttributeName"] for k in schema)


def test_table_definition_is_the_design_contract() -> None:
    definition = load_definition()
    assert definition["TableName"] == "CentralLLMAudit"
    assert definition["BillingMode"] == "PAY_PER_REQUEST"
    assert definition["TimeToLiveAttribute"] == "expiresAt"
    assert key_schema(definition["KeySchema"]) == ("id", "createdAt")
    assert {
        g["IndexName"]: key_schema(g["KeySchema"]) for g in definition["GlobalSecondaryIndexes"]
    } == {
        "GSI_UserTime": ("userId", "createdAt"),
        "GSI_StatusTime": ("statusCode", "createdAt"),
        "GSI_ProjectLatency": ("projectId", "latencyMs"),
    }
    types = {a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]}
    assert types == {
        "id": "S",
        "createdAt": "S",
        "userId": "S",
        "statusCode": "N",
        "projectId": "S",
        "latencyMs": "N",
    }
    assert "TimeToLiveAttribute" not in create_table_kwargs(definition)


def test_every_index_projects_what_the_query_command_shows() -> None:
    shown = {attribute for _, attribute in COLUMNS} | {"auditBucket", "auditObjectKey", "auditLine"}
    table_keys = {"id", "createdAt"}
    for index in load_definition()["GlobalSecondaryIndexes"]:
        projected = set(index["Projection"]["NonKeyAttributes"])
        projected |= set(key_schema(index["KeySchema"])) | table_keys
        assert shown <= projected, (index["IndexName"], shown - projected)


def test_resources_are_created_once_and_confirmed_after(stack: Stack) -> None:
    again = ensure_audit_resources(
        clients(stack.endpoint),
        stack.bucket,
        stack.table,
        stack.resources.queue_url.rsplit("/", 1)[1],
        stack.resources.dlq_url.rsplit("/", 1)[1],
        "logs",
        max_receive_count=2,
        visibility_timeout_s=1,
    )
    assert again == dataclasses.replace(stack.resources, archive_bucket=None)

    table = stack.ddb.describe_table(TableName=stack.table)["Table"]
    assert {g["IndexName"] for g in table["GlobalSecondaryIndexes"]} == {
        "GSI_UserTime",
        "GSI_StatusTime",
        "GSI_ProjectLatency",
    }
    ttl = stack.ddb.describe_time_to_live(TableName=stack.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expiresAt")

    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=stack.resources.queue_url, AttributeNames=["RedrivePolicy"]
    )["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == stack.resources.dlq_arn
    assert int(redrive["maxReceiveCount"]) == 2

    notification = stack.s3.get_bucket_notification_configuration(Bucket=stack.bucket)
    [queue_config] = notification["QueueConfigurations"]  # not duplicated by the second call
    assert queue_config["Id"] == NOTIFICATION_ID
    assert queue_config["QueueArn"] == stack.resources.queue_arn
    [rule] = queue_config["Filter"]["Key"]["FilterRules"]
    assert (rule["Name"].lower(), rule["Value"]) == ("prefix", "logs/")


def test_local_aws_cli_prints_the_resources(moto_server: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "central_llm_ops.local_aws", "--bucket", "cli-audit-bucket"],
        env={**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_server, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resources = json.loads(done.stdout)
    assert (resources["bucket"], resources["table"], resources["prefix"]) == (
        "cli-audit-bucket",
        "CentralLLMAudit",
        "logs",
    )
    assert resources["dlq_url"].endswith("/llm-audit-dlq")


def package_zip(tmp_path: Path) -> Path:
    """The function's zip, built by the operator's own script."""
    bundle = tmp_path / "function.zip"
    done = subprocess.run(
        [str(ROOT / "scripts" / "package-lambda.sh"), "--out", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return bundle


def test_packaged_zip_holds_the_package_and_nothing_else(tmp_path: Path) -> None:
    if shutil.which("zip") is None:
        pytest.skip("zip is not installed")
    with zipfile.ZipFile(package_zip(tmp_path)) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"llm_audit/{p.name}" for p in (ROOT / "lambda/llm_audit").glob("*.py"))
    assert "llm_audit/ingest.py" in names and "llm_audit/__init__.py" in names


def test_packaged_zip_imports_with_stdlib_and_boto3_only(tmp_path: Path) -> None:
    """Import the handler from the zip alone (isolated mode: no site-packages of ours)."""
    if shutil.which("zip") is None:
        pytest.skip("zip is not installed")
    bundle = package_zip(tmp_path)
    probe = f"""
import json, sys
sys.path.insert(0, {str(bundle)!r})
import llm_audit.ingest
assert llm_audit.ingest.__file__.startswith({str(bundle)!r}), llm_audit.ingest.__file__
allowed = {{"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six",
           "certifi", "llm_audit"}}  # certifi: botocore imports it when present
foreign = sorted(
    name for name in {{m.split(".")[0] for m in sys.modules}}
    if name not in sys.stdlib_module_names and name not in allowed and not name.startswith("_")
)
print(json.dumps({{"foreign": foreign, "answer": llm_audit.ingest.handler(
    {{"Service": "Amazon S3", "Event": "s3:TestEvent"}}, None)}}))
"""
    # boto3 comes from this interpreter's site-packages, as the runtime provides it;
    # the project itself (installed editable) must not be importable.
    site = str(Path(boto3.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.append({site!r})\n{probe}"],
        env={**AWS_TEST_ENV, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["foreign"] == []
    assert result["answer"]["skipped"] == 1
