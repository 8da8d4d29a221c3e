"""The stack's half of issue #13, checked on the template: what moto cannot show.

moto's CloudFormation creates the buckets without their Object Lock
configuration, versioning or lifecycle, and creates every `AWS::KMS::Key` as a
symmetric key whatever its KeySpec (test_stack_moto.py shows the resources
exist); so Object Lock, the lifecycle's noncurrent expiry, the key's spec and
every grant that could defeat the lock are pinned here. The reconciliation's
code and its policy run for real under enforced IAM in test_iam_enforced.py.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from central_llm_ops import reconcile
from ecs.stackgen.integrity import LOCK_DAYS_WITHOUT_RETENTION, RECONCILE_CONTAINER
from sidecar_audit.integrity.digest import ECDSA_SHA_256
from tests.deploy.tools import POLICIES, container, environment, load_json, resources, template

BUCKETS = ("AuditBucket", "ArchiveBucket")
# What would let a principal shorten, lift or step around a lock, or remove a version.
LOCK_DEFEATING = (
    "s3:BypassGovernanceRetention",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration",
    "s3:DeleteObjectVersion",
    "s3:DeleteObject",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketVersioning",
)


def _props(name: str) -> dict[str, Any]:
    props: dict[str, Any] = template()["Resources"][name]["Properties"]
    return props


def _resolve(value: Any, parameters: dict[str, str]) -> Any:
    """Evaluate Ref / Fn::If / Fn::Not / Fn::Equals over parameters, as CloudFormation would."""
    conditions = template()["Conditions"]
    if isinstance(value, dict) and "Ref" in value:
        return parameters[value["Ref"]]
    if isinstance(value, dict) and "Fn::If" in value:
        name, yes, no = value["Fn::If"]
        return _resolve(yes if _resolve(conditions[name], parameters) else no, parameters)
    if isinstance(value, dict) and "Fn::Not" in value:
        return not _resolve(value["Fn::Not"][0], parameters)
    if isinstance(value, dict) and "Fn::Equals" in value:
        left, right = (str(_resolve(v, parameters)) for v in value["Fn::Equals"])
        return left == right
    return value


def _parameters(**overrides: str) -> dict[str, str]:
    values = {
        name: str(body["Default"])
        for name, body in template()["Parameters"].items()
        if "Default" in body
    }
    return {**values, **overrides}


@pytest.mark.parametrize("bucket", BUCKETS)
def test_buckets_lock_every_version_by_default(bucket: str) -> None:
    props = _props(bucket)
    assert props["ObjectLockEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    lock = props["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    retention = lock["Rule"]["DefaultRetention"]
    assert retention["Mode"] == {"Ref": "ObjectLockMode"}
    assert "Years" not in retention
    mode = template()["Parameters"]["ObjectLockMode"]
    assert mode["Default"] == "GOVERNANCE"
    assert mode["AllowedValues"] == ["GOVERNANCE", "COMPLIANCE"]


@pytest.mark.parametrize(
    ("overrides", "days"),
    [
        ({}, "365"),  # defaults: the record retention (RetentionDays 365)
        ({"RetentionDays": "90"}, "90"),
        ({"RetentionDays": "0"}, str(LOCK_DAYS_WITHOUT_RETENTION)),  # items kept forever
        ({"ObjectLockDays": "2555", "RetentionDays": "90"}, "2555"),
    ],
)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_noncurrent_versions_outlive_their_lock(
    bucket: str, overrides: dict[str, str], days: str
) -> None:
    parameters = _parameters(**overrides)
    props = _props(bucket)
    locked = _resolve(
        props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Days"], parameters
    )
    assert str(locked) == days
    for rule in props["LifecycleConfiguration"]["Rules"]:
        assert "ExpirationInDays" not in rule and "ExpirationDate" not in rule
        expiry = rule.get("NoncurrentVersionExpiration")
        if expiry is not None:
            assert int(_resolve(expiry["NoncurrentDays"], parameters)) >= int(locked)


def _statements_in_template() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, body in template()["Resources"].items():
        props = body.get("Properties", {})
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if body["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props["PolicyDocument"])
        for document in documents:
            found += [(name, statement) for statement in document["Statement"]]
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_no_role_of_the_stack_can_defeat_the_lock() -> None:
    statements = _statements_in_template()
    assert {name for name, _ in statements} >= {
        "TaskRole",
        "IngestFunctionRole",
        "AuditReaderRole",
        "ReconcileTaskRole",
    }
    for name, statement in statements:
        if statement["Effect"] != "Allow":
            continue
        for action in _actions(statement):
            hits = [a for a in LOCK_DEFEATING if fnmatch.fnmatch(a.lower(), action.lower())]
            assert not hits, (name, action)


def test_only_the_task_role_signs_and_only_with_the_digest_key() -> None:
    signers = [
        (name, statement)
        for name, statement in _statements_in_template()
        if any(fnmatch.fnmatch("kms:Sign", a) for a in _actions(statement))
    ]
    assert [name for name, _ in signers] == ["TaskRole"]
    (_, statement) = signers[0]
    assert _actions(statement) == ["kms:Sign"]
    assert statement["Resource"] == {"Fn::Sub": "${DigestSigningKey.Arn}"}


def test_the_signing_key_is_what_the_sidecar_signs_with() -> None:
    body = template()["Resources"]["DigestSigningKey"]
    props = body["Properties"]
    # KmsSigner: MessageType DIGEST, ECDSA_SHA_256 — a P-256 key for signing.
    assert ECDSA_SHA_256 == "ECDSA_SHA_256"
    assert (props["KeySpec"], props["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert body["DeletionPolicy"] == "Retain"  # old digests stay checkable
    (statement,) = props["KeyPolicy"]["Statement"]
    assert statement["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    }
    env = environment(container("audit-sidecar"))
    assert env["AUDIT_DIGEST_KMS_KEY_ID"] == "${DigestSigningKey.Arn}"


def test_reader_checks_signatures_and_reads_digests() -> None:
    policy = load_json(POLICIES / "audit-reader.json")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["CheckDigestSignatures"]["Action"] == ["kms:GetPublicKey", "kms:Verify"]
    assert by_sid["CheckDigestSignatures"]["Resource"] == "${DigestSigningKey.Arn}"
    assert (
        "arn:${AWS::Partition}:s3:::${AuditBucketName}/${AuditPrefix}-digest/*"
        in (by_sid["ReadAuditRecordsAndDigests"]["Resource"])
    )


def test_reconciliation_runs_every_15_minutes_from_the_ops_image() -> None:
    rule = _props("ReconcileSchedule")
    assert rule["ScheduleExpression"] == "cron(0/15 * * * ? *)"
    assert rule["State"] == {"Fn::If": ["HasSidecarImage", "ENABLED", "DISABLED"]}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    ecs = target["EcsParameters"]
    assert ecs["TaskDefinitionArn"] == {"Ref": "ReconcileTaskDefinition"}
    assert ecs["LaunchType"] == "FARGATE"
    assert ecs["NetworkConfiguration"]["AwsVpcConfiguration"]["AssignPublicIp"] == "DISABLED"

    task = _props("ReconcileTaskDefinition")
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["ReconcileTaskRole", "Arn"]}
    (box,) = task["ContainerDefinitions"]
    assert box["Name"] == RECONCILE_CONTAINER
    # The Dockerfile's `ops` target is the image holding central_llm_ops.
    assert box["Image"]["Fn::Sub"].endswith("/${SidecarRepositoryName}:${SidecarImageTag}-ops")
    assert box["EntryPoint"] == ["python", "-m", reconcile.__name__]
    env = {e["Name"]: e["Value"] for e in box["Environment"]}
    assert env["AUDIT_BUCKET"] == {"Ref": "AuditBucketName"}
    assert env["AUDIT_PREFIX"] == {"Ref": "AuditPrefix"}
    assert env["TABLE_NAME"] == {"Ref": "TableName"}
    assert env["AUDIT_DIGEST_KMS_KEY_ID"] == {"Fn::GetAtt": ["DigestSigningKey", "Arn"]}
    args = reconcile.parser().parse_args([])
    assert args.settle == 900 and args.window == 3600


def test_schedule_role_runs_only_the_reconcile_task() -> None:
    (policy,) = _props("ReconcileScheduleRole")["Policies"]
    run, pass_role = policy["PolicyDocument"]["Statement"]
    assert run["Action"] == "ecs:RunTask"
    assert run["Resource"] == {"Ref": "ReconcileTaskDefinition"}
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["Cluster", "Arn"]}}}
    assert pass_role["Action"] == "iam:PassRole"
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == (
        "ecs-tasks.amazonaws.com"
    )


def test_each_reconciliation_metric_alarms_above_zero() -> None:
    alarms = resources("AWS::CloudWatch::Alarm")
    for name in [*reconcile.METRICS, reconcile.FAILED_METRIC]:
        props = alarms[f"{name}Alarm"]["Properties"]
        assert (props["Namespace"], props["MetricName"]) == (reconcile.NAMESPACE, name)
        assert props["Dimensions"] == [{"Name": "AuditBucket", "Value": {"Ref": "AuditBucketName"}}]
        assert props["ComparisonOperator"] == "GreaterThanThreshold"
        assert props["Threshold"] == 0
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # The EMF line the reconciliation prints declares exactly these, with that dimension.
    line = reconcile.emf_line("central-llm-audit", {"recordsMissing": 2}, 0)
    (declared,) = line["_aws"]["CloudWatchMetrics"]
    assert declared["Dimensions"] == [["AuditBucket"]]
    assert [m["Name"] for m in declared["Metrics"]] == [*reconcile.METRICS, "AuditReconcileFailed"]
    assert line["AuditRecordsMissing"] == 2 and line["AuditItemsMissing"] == 0
    assert line["AuditReconcileFailed"] == 0
    failed = reconcile.emf_line("central-llm-audit", None, 0)
    (declared,) = failed["_aws"]["CloudWatchMetrics"]
    assert [m["Name"] for m in declared["Metrics"]] == ["AuditReconcileFailed"]
