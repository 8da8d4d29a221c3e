"""The whole stack deployed into moto's CloudFormation: the resources exist with the right keys.

What moto does not apply from a template (notification, versioning, lifecycle,
TTL, alarms, task NetworkMode, service load balancers, capacity provider
strategy, API Gateway stage/keys/usage plan/VPC link) is checked on the
template in test_stack_template.py and test_stack_edge.py.
"""

from __future__ import annotations

import ast
import json

from tests.deploy.conftest import DeployedStack


def test_every_resource_was_created(deployed_stack: DeployedStack) -> None:
    cfn = deployed_stack.client("cloudformation")
    listed = cfn.describe_stack_resources(StackName=deployed_stack.name)["StackResources"]
    assert listed
    assert {r["ResourceStatus"] for r in listed} == {"CREATE_COMPLETE"}
    assert deployed_stack.outputs["AuditBucket"] == "central-llm-audit"
    assert deployed_stack.outputs["AuditTableName"] == "CentralLLMAudit"
    assert deployed_stack.outputs["ClusterName"] == "central-llm-service-cluster"


def test_table_has_the_design_keys_and_indexes(deployed_stack: DeployedStack) -> None:
    table = deployed_stack.client("dynamodb").describe_table(TableName="CentralLLMAudit")["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "id", "KeyType": "HASH"},
        {"AttributeName": "createdAt", "KeyType": "RANGE"},
    ]
    indexes = {g["IndexName"]: g["KeySchema"] for g in table["GlobalSecondaryIndexes"]}
    assert indexes == {
        "GSI_UserTime": [
            {"AttributeName": "userId", "KeyType": "HASH"},
            {"AttributeName": "createdAt", "KeyType": "RANGE"},
        ],
        "GSI_StatusTime": [
            {"AttributeName": "statusCode", "KeyType": "HASH"},
            {"AttributeName": "createdAt", "KeyType": "RANGE"},
        ],
        "GSI_ProjectLatency": [
            {"AttributeName": "projectId", "KeyType": "HASH"},
            {"AttributeName": "latencyMs", "KeyType": "RANGE"},
        ],
    }
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types["statusCode"] == "N" and types["latencyMs"] == "N"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_audit_bucket_exists_with_kms_encryption(deployed_stack: DeployedStack) -> None:
    s3 = deployed_stack.client("s3")
    for bucket in ("central-llm-audit", "central-llm-audit-raw"):
        (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"
        ]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


def test_ingest_queue_redrives_to_the_dlq(deployed_stack: DeployedStack) -> None:
    sqs = deployed_stack.client("sqs")
    dlq_url = sqs.get_queue_url(QueueName="llm-audit-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.get_queue_url(QueueName="llm-audit-events")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 5
    assert int(attributes["VisibilityTimeout"]) == 360


def test_lambda_is_fed_by_the_queue_and_configured(deployed_stack: DeployedStack) -> None:
    lam = deployed_stack.client("lambda")
    config = lam.get_function(FunctionName="llm-audit-ingest")["Configuration"]
    assert config["Runtime"] == "python3.12"
    assert config["Handler"] == "llm_audit.ingest.handler"
    variables = config["Environment"]["Variables"]
    assert variables["TABLE_NAME"] == "CentralLLMAudit"
    assert variables["AUDIT_PREFIX"] == "logs"
    assert variables["ARCHIVE_BUCKET"] == "central-llm-audit-raw"
    assert str(variables["RETENTION_DAYS"]) == "365"
    (mapping,) = lam.list_event_source_mappings(FunctionName="llm-audit-ingest")[
        "EventSourceMappings"
    ]
    assert mapping["EventSourceArn"].endswith(":llm-audit-events")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_ecs_service_and_task_definition(deployed_stack: DeployedStack) -> None:
    ecs = deployed_stack.client("ecs")
    (service,) = ecs.describe_services(
        cluster="central-llm-service-cluster", services=["central-llm-service"]
    )["services"]
    # moto ignores the capacity provider strategy (it reports launch type EC2);
    # test_stack_template.py pins the strategy on the template.
    assert service["desiredCount"] == 1
    task = ecs.describe_task_definition(taskDefinition="central-llm-service")["taskDefinition"]
    containers = {c["name"]: c for c in task["containerDefinitions"]}
    assert set(containers) == {"vllm", "audit-sidecar", "otel-collector"}
    assert containers["otel-collector"]["essential"] is False  # metrics never stop serving
    assert "resourceRequirements" not in containers["otel-collector"]
    sidecar = containers["audit-sidecar"]
    assert sidecar["dependsOn"] == [{"containerName": "vllm", "condition": "HEALTHY"}]
    assert sidecar["image"].endswith("/central-llm-sidecar:git-0123456789ab")
    assert containers["vllm"]["image"].endswith("/mistral8b-vllm:git-0123456789ab")
    assert containers["vllm"]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    (volume,) = task["volumes"]
    assert volume["dockerVolumeConfiguration"]["scope"] == "shared"
    (daemon,) = ecs.describe_services(
        cluster="central-llm-service-cluster", services=["central-llm-service-gpu-metrics"]
    )["services"]
    # moto reports every service as REPLICA; test_observability.py pins DAEMON on the template.
    assert daemon["taskDefinition"].split("/")[-1].startswith("central-llm-service-gpu-metrics:")


def test_target_group_health_check(deployed_stack: DeployedStack) -> None:
    elb = deployed_stack.client("elbv2")
    (group,) = elb.describe_target_groups(Names=["central-llm-service"])["TargetGroups"]
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("TCP", 8000, "ip")
    assert group["HealthCheckPath"] == "/health"
    assert group["HealthCheckIntervalSeconds"] == 30
    assert group["HealthCheckTimeoutSeconds"] == 5
    attributes = elb.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])
    values = {a["Key"]: a["Value"] for a in attributes["Attributes"]}
    assert values["deregistration_delay.timeout_seconds"] == "300"


def test_ecr_repositories_and_roles(deployed_stack: DeployedStack) -> None:
    ecr = deployed_stack.client("ecr")
    repositories = {
        r["repositoryName"]: r["imageTagMutability"]
        for r in ecr.describe_repositories()["repositories"]
    }
    assert repositories == {"mistral8b-vllm": "IMMUTABLE", "central-llm-sidecar": "IMMUTABLE"}
    iam = deployed_stack.client("iam")
    task_role = next(r for r in iam.list_roles()["Roles"] if "-TaskRole-" in r["RoleName"])
    document = iam.get_role_policy(
        RoleName=task_role["RoleName"], PolicyName="ecs-task-audit-writer"
    )["PolicyDocument"]
    if isinstance(document, str):
        # moto keeps a CloudFormation policy as Python's repr of the dict, not JSON.
        document = ast.literal_eval(document)
    # Put only: audit objects under the prefix, digests beside it, and sign digests with
    # the stack's key (issue 13); nothing else.
    key_arn = deployed_stack.outputs["DigestSigningKeyArn"]
    assert [s["Action"] for s in document["Statement"]] == [
        "s3:PutObject",
        "s3:PutObject",
        "kms:Sign",
    ]
    assert [s["Resource"] for s in document["Statement"]] == [
        "arn:aws:s3:::central-llm-audit/logs/*",
        "arn:aws:s3:::central-llm-audit/logs-digest/*",
        key_arn,
    ]


def test_signing_key_and_reconciliation_schedule(deployed_stack: DeployedStack) -> None:
    """What moto creates of issue 13's stack part. moto makes every CloudFormation KMS key
    symmetric and applies no Object Lock configuration: test_stack_integrity.py pins those
    on the template."""
    key_arn = deployed_stack.outputs["DigestSigningKeyArn"]
    kms = deployed_stack.client("kms")
    # moto keeps a CloudFormation key policy as a dict and then fails every call that
    # checks it (DescribeKey: 500); listing does not check it.
    assert key_arn in {k["KeyArn"] for k in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases[f"alias/{deployed_stack.name}-audit-digest"] == key_arn.rsplit("/", 1)[1]

    events = deployed_stack.client("events")
    (rule,) = [r for r in events.list_rules()["Rules"] if "ReconcileSchedule" in r["Name"]]
    assert rule["ScheduleExpression"] == "cron(0/15 * * * ? *)"
    assert rule["State"] == "ENABLED"  # an image tag is given
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert (
        target["EcsParameters"]["TaskDefinitionArn"]
        == (deployed_stack.outputs["ReconcileTaskDefinitionArn"])
    )
    ecs = deployed_stack.client("ecs")
    task = ecs.describe_task_definition(
        taskDefinition=deployed_stack.outputs["ReconcileTaskDefinitionArn"]
    )["taskDefinition"]
    (box,) = task["containerDefinitions"]
    assert box["image"].endswith("/central-llm-sidecar:git-0123456789ab-ops")
    env = {e["name"]: e["value"] for e in box["environment"]}
    assert env["AUDIT_DIGEST_KMS_KEY_ID"] == key_arn
    assert env["TABLE_NAME"] == "CentralLLMAudit"


def test_task_role_may_protect_the_tasks_of_its_cluster(deployed_stack: DeployedStack) -> None:
    """TaskProtection defaults to true: its policy is on the task role."""
    iam = deployed_stack.client("iam")
    task_role = next(r for r in iam.list_roles()["Roles"] if "-TaskRole-" in r["RoleName"])
    document = iam.get_role_policy(
        RoleName=task_role["RoleName"], PolicyName="ecs-task-protection"
    )["PolicyDocument"]
    if isinstance(document, str):
        document = ast.literal_eval(document)
    (statement,) = document["Statement"]
    assert statement["Action"] == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    assert statement["Resource"] == (
        "arn:aws:ecs:eu-central-1:123456789012:task/central-llm-service-cluster/*"
    )
