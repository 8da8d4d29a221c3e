"""The CloudFormation template: rendered from its sources, lint-clean, saying what DESIGN.md says.

moto does not apply every property of a template (bucket notification,
versioning, lifecycle, TTL, alarms, NetworkMode, service load balancers), so
those are checked here, on the template itself; test_stack_moto.py checks
what a deploy really creates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ecs.stackgen.cfn import pascal_keys, placeholders, substitute
from ecs.stackgen.template import unresolved_placeholders
from tests.deploy.tools import (
    AUDIT_TABLE,
    POLICIES,
    ROOT,
    TEMPLATE,
    load_json,
    require_tool,
    resources,
    task_definition,
    template,
)


def _properties(name: str) -> dict[str, Any]:
    body: dict[str, Any] = template()["Resources"][name]["Properties"]
    return body


def _sub(value: Any) -> str:
    assert isinstance(value, dict) and set(value) == {"Fn::Sub"}, value
    text: str = value["Fn::Sub"]
    return text


# --- one source of truth ------------------------------------------------------


def test_checked_in_template_is_a_fresh_render() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ecs.stackgen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_when_a_source_changes(tmp_path: Path) -> None:
    for relative in ("ecs", "lambda"):
        shutil.copytree(ROOT / relative, tmp_path / relative)
    task = load_json(tmp_path / "ecs" / "task-definition.json")
    task["containerDefinitions"][1]["stopTimeout"] = 30
    (tmp_path / "ecs" / "task-definition.json").write_text(json.dumps(task))
    result = subprocess.run(
        [sys.executable, "-m", "ecs.stackgen", "--check", "--root", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "stale" in result.stderr


def test_task_definition_in_template_is_the_json_file() -> None:
    """The file's task definition, plus only the non-essential collector (last) and the
    sidecar's DataDog labels (docs/observability.md)."""
    rendered = dict(_properties("TaskDefinition"))
    containers = [dict(c) for c in rendered.pop("ContainerDefinitions")]
    collector = containers.pop()
    assert collector["Name"] == "otel-collector" and collector["Essential"] is False
    for container in containers:
        labels = container.pop("DockerLabels", None)
        assert labels is None or labels["Fn::If"][0] == "HasDataDog"
    expected = pascal_keys(substitute(task_definition()))
    assert {**rendered, "ContainerDefinitions": containers} == expected


@pytest.mark.parametrize(
    ("role", "policy_file"),
    [
        ("TaskRole", "ecs-task-audit-writer.json"),
        ("ExecutionRole", "ecs-task-execution.json"),
        ("IngestFunctionRole", "llm-audit-ingest.json"),
        ("AuditReaderRole", "audit-reader.json"),
        ("ReconcileTaskRole", "audit-reconcile.json"),
    ],
)
def test_role_policies_in_template_are_the_policy_files(role: str, policy_file: str) -> None:
    (policy,) = _properties(role)["Policies"]
    assert policy["PolicyDocument"] == substitute(load_json(POLICIES / policy_file))


def test_table_in_template_is_lambda_audit_table_json() -> None:
    definition = load_json(AUDIT_TABLE)
    table = _properties("AuditTable")
    assert template()["Parameters"]["TableName"]["Default"] == definition["TableName"]
    assert table["TableName"] == {"Ref": "TableName"}
    assert table["KeySchema"] == definition["KeySchema"]
    assert table["AttributeDefinitions"] == definition["AttributeDefinitions"]
    assert table["BillingMode"] == definition["BillingMode"]
    assert table["GlobalSecondaryIndexes"] == definition["GlobalSecondaryIndexes"]
    assert table["TimeToLiveSpecification"] == {
        "AttributeName": definition["TimeToLiveAttribute"],
        "Enabled": True,
    }


def test_every_placeholder_names_a_parameter_resource_or_pseudo_parameter() -> None:
    assert placeholders(template())
    assert unresolved_placeholders(template()) == set()


# --- linting ------------------------------------------------------------------


def test_cfn_lint_is_clean() -> None:
    cfn_lint = require_tool("cfn-lint")
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- contracts from DESIGN.md -------------------------------------------------


def test_design_names_are_the_defaults() -> None:
    defaults = {k: v.get("Default") for k, v in template()["Parameters"].items()}
    assert defaults["AuditBucketName"] == "central-llm-audit"
    assert defaults["AuditPrefix"] == "logs"
    assert defaults["ArchiveBucketName"] == "central-llm-audit-raw"
    assert defaults["TableName"] == "CentralLLMAudit"
    assert defaults["IngestFunctionName"] == "llm-audit-ingest"
    assert defaults["DlqName"] == "llm-audit-dlq"
    assert defaults["ClusterName"] == "central-llm-service-cluster"
    assert defaults["ServiceName"] == "central-llm-service"
    assert defaults["TargetGroupName"] == "central-llm-service"
    assert defaults["VllmRepositoryName"] == "mistral8b-vllm"
    assert defaults["ServiceLogGroupName"] == "/ecs/central-llm-service"
    assert _properties("IngestLogGroup")["LogGroupName"] == {
        "Fn::Sub": "/aws/lambda/${IngestFunctionName}"
    }


def test_audit_bucket_notifies_the_ingest_queue_on_the_prefix() -> None:
    bucket = template()["Resources"]["AuditBucket"]
    (queue_config,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert queue_config["Event"] == "s3:ObjectCreated:*"
    assert queue_config["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    (rule,) = queue_config["Filter"]["S3Key"]["Rules"]
    assert rule["Name"] == "prefix"
    assert _sub(rule["Value"]) == "${AuditPrefix}/"
    # S3 validates the destination when the notification is put.
    assert "IngestQueuePolicy" in bucket["DependsOn"]


def test_queue_policy_lets_only_the_audit_bucket_send() -> None:
    policy = _properties("IngestQueuePolicy")
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert _sub(statement["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(
        ":s3:::${AuditBucketName}"
    )
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


@pytest.mark.parametrize("bucket", ["AuditBucket", "ArchiveBucket"])
def test_buckets_are_encrypted_versioned_private_tiered_and_retained(bucket: str) -> None:
    body = template()["Resources"][bucket]
    props = body["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    (lifecycle,) = props["LifecycleConfiguration"]["Rules"]
    classes = [t["StorageClass"] for t in lifecycle["Transitions"]]
    assert classes == ["STANDARD_IA", "GLACIER_IR"]
    assert body["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize(
    ("policy", "bucket"),
    [("AuditBucketPolicy", "AuditBucket"), ("ArchiveBucketPolicy", "ArchiveBucket")],
)
def test_bucket_policies_deny_plain_http(policy: str, bucket: str) -> None:
    props = _properties(policy)
    assert props["Bucket"] == {"Ref": bucket}
    (statement,) = props["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_failed_ingestions_land_in_the_dlq_after_retries() -> None:
    queue = _properties("IngestQueue")
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["Dlq", "Arn"]}
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 3
    timeout = _properties("IngestFunction")["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout
    mapping = _properties("IngestEventSourceMapping")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}


def test_lambda_configuration_matches_the_ingestion_contract() -> None:
    function = _properties("IngestFunction")
    assert function["Runtime"] == "python3.12"
    assert function["Handler"] == "llm_audit.ingest.handler"
    variables = function["Environment"]["Variables"]
    assert set(variables) == {
        "TABLE_NAME",
        "AUDIT_PREFIX",
        "MAX_PREVIEW_CHARS",
        "RETENTION_DAYS",
        "ARCHIVE_BUCKET",
    }
    assert variables["MAX_PREVIEW_CHARS"] == "2048"
    assert (ROOT / "lambda" / "llm_audit" / "ingest.py").exists()


def test_target_group_keeps_the_original_health_check_and_drains_long_streams() -> None:
    group = _properties("TargetGroup")
    assert group["Port"] == 8000
    assert group["TargetType"] == "ip"  # awsvpc tasks register by IP
    assert group["HealthCheckProtocol"] == "HTTP"
    assert group["HealthCheckPath"] == "/health"
    assert group["HealthCheckIntervalSeconds"] == 30
    assert group["HealthCheckTimeoutSeconds"] == 5
    assert group["UnhealthyThresholdCount"] == 3
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    # Longer than the sidecar's own SIGTERM grace: streams finish while draining.
    assert int(attributes["deregistration_delay.timeout_seconds"]) >= 90
    # Connections outliving the delay continue into the sidecar's grace period.
    assert attributes["deregistration_delay.connection_termination.enabled"] == "false"


def test_service_runs_the_task_behind_the_nlb_with_a_circuit_breaker() -> None:
    service = _properties("Service")
    assert "LaunchType" not in service  # placed by the GPU capacity provider
    assert service["CapacityProviderStrategy"] == [
        {"CapacityProvider": {"Ref": "GpuCapacityProvider"}, "Weight": 1, "Base": 0}
    ]
    assert service["TaskDefinition"] == {"Ref": "TaskDefinition"}
    (balancer,) = service["LoadBalancers"]
    assert balancer == {
        "ContainerName": "audit-sidecar",
        "ContainerPort": 8000,
        "TargetGroupArn": {"Ref": "TargetGroup"},
    }
    breaker = service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
    assert breaker == {"Enable": True, "Rollback": True}
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"] == [
        {"Ref": "TaskSecurityGroup"}
    ]
    assert _properties("Cluster")["ClusterSettings"] == [
        {"Name": "containerInsights", "Value": "enabled"}
    ]


def test_only_the_nlb_reaches_the_sidecar_port() -> None:
    assert "SecurityGroupIngress" not in _properties("TaskSecurityGroup")
    ingress = resources("AWS::EC2::SecurityGroupIngress")
    # Besides the NLB's rule, only DataDog's metrics ports from the hosts, when enabled.
    metrics = {name for name in ingress if name != "TaskIngressFromLoadBalancer"}
    for name in metrics:
        body = ingress[name]
        assert body["Condition"] == "HasDataDog"
        assert body["Properties"]["SourceSecurityGroupId"] == {"Ref": "InstanceSecurityGroup"}
        assert body["Properties"]["FromPort"] == body["Properties"]["ToPort"] in (9464, 9465)
    assert set(ingress) - metrics == {"TaskIngressFromLoadBalancer"}
    rule = ingress["TaskIngressFromLoadBalancer"]["Properties"]
    assert rule["GroupId"] == {"Ref": "TaskSecurityGroup"}
    assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (8000, 8000, "tcp")
    assert rule["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"}
    assert "CidrIp" not in rule
    assert "SecurityGroupIngress" not in _properties("InstanceSecurityGroup")


def test_ecr_repositories_have_immutable_tags() -> None:
    repositories = resources("AWS::ECR::Repository")
    assert set(repositories) == {"VllmRepository", "SidecarRepository"}
    for body in repositories.values():
        assert body["Properties"]["ImageTagMutability"] == "IMMUTABLE"
        assert body["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}


def _alarm_metrics(name: str) -> dict[str, Any]:
    props = _properties(name)
    assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    return props


def test_alarms_from_the_seed_exist() -> None:
    alarms = resources("AWS::CloudWatch::Alarm")
    assert {
        "TasksBelowDesiredAlarm",
        "IngestErrorsAlarm",
        "DlqDepthAlarm",
        "AuditShippingStalledAlarm",
    } <= set(alarms)

    stalled = _alarm_metrics("AuditShippingStalledAlarm")
    assert stalled["Namespace"] == "CentralLLM/Audit"
    assert stalled["MetricName"] == "AuditOldestUnshippedAgeSeconds"
    assert stalled["Dimensions"] == [{"Name": "ServiceName", "Value": {"Ref": "ServiceName"}}]

    errors = _alarm_metrics("IngestErrorsAlarm")
    assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")

    dlq = _alarm_metrics("DlqDepthAlarm")
    assert (dlq["Namespace"], dlq["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert dlq["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["Dlq", "QueueName"]}}
    ]

    tasks = _alarm_metrics("TasksBelowDesiredAlarm")
    expression = next(m for m in tasks["Metrics"] if m.get("ReturnData"))
    assert expression["Expression"] == "desired - running"
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in tasks["Metrics"] if "MetricStat" in m}
    assert names == {"RunningTaskCount", "DesiredTaskCount"}


def test_shipping_alarm_threshold_is_the_sidecar_health_limit() -> None:
    from sidecar_audit.config import SETTINGS

    limit = next(s for s in SETTINGS if s.env == "HEALTH_MAX_SHIP_LAG_S")
    assert _properties("AuditShippingStalledAlarm")["Threshold"] == float(limit.default)


def test_task_role_may_only_put_audit_objects_and_digests_and_sign() -> None:
    policy = load_json(POLICIES / "ecs-task-audit-writer.json")
    records, digests, signing = policy["Statement"]
    assert records == {
        "Sid": records["Sid"],
        "Effect": "Allow",
        "Action": "s3:PutObject",
        "Resource": "arn:${AWS::Partition}:s3:::${AuditBucketName}/${AuditPrefix}/*",
    }
    assert digests == {
        "Sid": digests["Sid"],
        "Effect": "Allow",
        "Action": "s3:PutObject",
        "Resource": "arn:${AWS::Partition}:s3:::${AuditBucketName}/${AuditPrefix}-digest/*",
    }
    # Issue #13: the digest signing key, Sign only (never its private half, never Verify).
    assert signing == {
        "Sid": signing["Sid"],
        "Effect": "Allow",
        "Action": "kms:Sign",
        "Resource": "${DigestSigningKey.Arn}",
    }


def test_no_policy_grants_wildcard_actions_or_resources_beyond_ecr_login() -> None:
    for path in POLICIES.glob("*.json"):
        for statement in load_json(path)["Statement"]:
            actions = (
                statement["Action"]
                if isinstance(statement["Action"], list)
                else [statement["Action"]]
            )
            assert all("*" not in action for action in actions), (path.name, actions)
            if statement["Resource"] == "*":
                assert actions == ["ecr:GetAuthorizationToken"], (path.name, actions)
