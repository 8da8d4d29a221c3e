"""A provable audit trail in the stack: Object Lock, the digest signing key, the reconciliation.

Issue #13, the stack's part (the sidecar writes the digests, `central-llm-audit-verify`
checks them; docs/audit-pipeline.md "Proving the trail"):

- **Object Lock** on the audit bucket (records under `<AuditPrefix>/` and
  digests under `<AuditPrefix>-digest/`: the lock is per bucket) and on the
  archive bucket. Every new object version gets a default retention of
  `ObjectLockMode` (GOVERNANCE by default) for the lock period: `ObjectLockDays`
  when set, else `RetentionDays` (the audit items' lifetime), else 365 days
  when items are kept forever (a year covers the yearly audit cycle; longer is
  a parameter away). Noncurrent versions expire only after that period (a
  version becomes noncurrent no earlier than it was written, so it is never
  due before its lock ends).
- **Signing key**: an asymmetric KMS key (ECC_NIST_P256, SIGN_VERIFY: the
  sidecar's KmsSigner signs a SHA-256 digest with ECDSA_SHA_256). The task
  role may only `kms:Sign` with it (ecs/policies/ecs-task-audit-writer.json)
  and no other policy of the stack grants Sign (a test checks). The key
  policy delegates to the account's IAM policies: a Deny for every principal
  but the task role would need the role's ARN in the key policy and the key's
  ARN in the role's policy, a cycle CloudFormation cannot create.
- **Reconciliation**: an EventBridge rule runs `python -m central_llm_ops.reconcile`
  every 15 minutes as a Fargate task of the cluster, from the sidecar
  repository's `<SidecarImageTag>-ops` image (the Dockerfile's `ops` target:
  the only image holding `central_llm_ops`; scripts/build-push-deploy.sh pushes
  it with the sidecar). Its role (ecs/policies/audit-reconcile.json) reads the
  bucket and the table and fetches the public key, nothing else; its EMF line
  becomes the three metrics, each alarmed above 0. The rule is disabled while
  `SidecarImageTag` is `none` (no image to run yet).
"""

from __future__ import annotations

from typing import Any

from ecs.stackgen.alarms import alarm
from ecs.stackgen.cfn import Json, get_att, ref, sub
from ecs.stackgen.service import task_role

LOCK_DAYS_WITHOUT_RETENTION = 365
RECONCILE_CONTAINER = "audit-reconcile"
RECONCILE_SCHEDULE = "cron(0/15 * * * ? *)"
RECONCILE_PERIOD_S = 900
# Verify holds an hour's records in memory to match items and seqs.
RECONCILE_CPU, RECONCILE_MEMORY_MIB = 1024, 4096
RECONCILE_METRICS = ("AuditRecordsMissing", "AuditObjectsTampered", "AuditItemsMissing")
AUDIT_NAMESPACE = "CentralLLM/Audit"


def integrity_parameters() -> dict[str, Json]:
    return {
        "ObjectLockMode": {
            "Type": "String",
            "Default": "GOVERNANCE",
            "AllowedValues": ["GOVERNANCE", "COMPLIANCE"],
            "Description": "Default Object Lock mode of new audit and archive objects "
            "(COMPLIANCE: nobody, not even the account root, can shorten or remove it)",
        },
        "ObjectLockDays": {
            "Type": "Number",
            "Default": 0,
            "MinValue": 0,
            "MaxValue": 36500,
            "Description": "Days each audit and archive object version is locked; "
            f"0: RetentionDays ({LOCK_DAYS_WITHOUT_RETENTION} when RetentionDays is 0)",
        },
    }


def integrity_conditions() -> dict[str, Json]:
    return {
        "HasObjectLockDays": {"Fn::Not": [{"Fn::Equals": [ref("ObjectLockDays"), "0"]}]},
        "HasSidecarImage": {"Fn::Not": [{"Fn::Equals": [ref("SidecarImageTag"), "none"]}]},
    }


def lock_days() -> Json:
    """The lock period in days, as the parameters resolve it (see the module docstring)."""
    return {
        "Fn::If": [
            "HasObjectLockDays",
            ref("ObjectLockDays"),
            {"Fn::If": ["HasRetention", ref("RetentionDays"), LOCK_DAYS_WITHOUT_RETENTION]},
        ]
    }


def object_lock() -> Json:
    """Bucket properties: Object Lock on, default retention of every new version."""
    return {
        "ObjectLockEnabled": True,
        "ObjectLockConfiguration": {
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": ref("ObjectLockMode"), "Days": lock_days()}},
        },
    }


def _signing_key() -> dict[str, Json]:
    root = sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")
    return {
        "DigestSigningKey": {
            "Type": "AWS::KMS::Key",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "Description": "Signs the audit digest chains (sidecar; verify checks)",
                "KeySpec": "ECC_NIST_P256",
                "KeyUsage": "SIGN_VERIFY",
                "PendingWindowInDays": 30,
                "KeyPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "AccountIamPoliciesDecide",
                            "Effect": "Allow",
                            "Principal": {"AWS": root},
                            "Action": "kms:*",
                            "Resource": "*",
                        },
                    ],
                },
            },
        },
        "DigestSigningKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {
                "AliasName": sub("alias/${AWS::StackName}-audit-digest"),
                "TargetKeyId": ref("DigestSigningKey"),
            },
        },
    }


def _reconcile_task_definition() -> Json:
    image = sub(
        "${AWS::AccountId}.dkr.ecr.${AWS::Region}.amazonaws.com/"
        "${SidecarRepositoryName}:${SidecarImageTag}-ops"
    )
    environment = {
        "AUDIT_BUCKET": ref("AuditBucketName"),
        "AUDIT_PREFIX": ref("AuditPrefix"),
        "TABLE_NAME": ref("TableName"),
        "AUDIT_DIGEST_KMS_KEY_ID": get_att("DigestSigningKey", "Arn"),
        "AWS_REGION": ref("AWS::Region"),
    }
    return {
        "Type": "AWS::ECS::TaskDefinition",
        "Properties": {
            "Family": sub("${AWS::StackName}-audit-reconcile"),
            "RequiresCompatibilities": ["FARGATE"],
            "NetworkMode": "awsvpc",
            "Cpu": str(RECONCILE_CPU),
            "Memory": str(RECONCILE_MEMORY_MIB),
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
            "TaskRoleArn": get_att("ReconcileTaskRole", "Arn"),
            "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
            "ContainerDefinitions": [
                {
                    "Name": RECONCILE_CONTAINER,
                    "Image": image,
                    "Essential": True,
                    "EntryPoint": ["python", "-m", "central_llm_ops.reconcile"],
                    "Environment": [
                        {"Name": name, "Value": value} for name, value in environment.items()
                    ],
                    "ReadonlyRootFilesystem": True,
                    "LogConfiguration": {
                        "LogDriver": "awslogs",
                        "Options": {
                            "awslogs-group": ref("ServiceLogGroupName"),
                            "awslogs-region": ref("AWS::Region"),
                            "awslogs-stream-prefix": "reconcile",
                        },
                    },
                }
            ],
        },
    }


def _schedule() -> dict[str, Json]:
    return {
        "ReconcileSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Central LLM audit reconciliation: no inbound, HTTPS to AWS",
                "VpcId": ref("VpcId"),
                "SecurityGroupEgress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 443,
                        "ToPort": 443,
                        "CidrIp": "0.0.0.0/0",
                        "Description": "S3, DynamoDB, KMS, ECR, logs",
                    }
                ],
            },
        },
        "ReconcileScheduleRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {
                                "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}
                            },
                        }
                    ],
                },
                "Policies": [
                    {
                        "PolicyName": "run-audit-reconcile",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Sid": "RunTheReconcileTask",
                                    "Effect": "Allow",
                                    "Action": "ecs:RunTask",
                                    "Resource": ref("ReconcileTaskDefinition"),
                                    "Condition": {
                                        "ArnEquals": {"ecs:cluster": get_att("Cluster", "Arn")}
                                    },
                                },
                                {
                                    "Sid": "PassItsRoles",
                                    "Effect": "Allow",
                                    "Action": "iam:PassRole",
                                    "Resource": [
                                        get_att("ReconcileTaskRole", "Arn"),
                                        get_att("ExecutionRole", "Arn"),
                                    ],
                                    "Condition": {
                                        "StringEquals": {
                                            "iam:PassedToService": "ecs-tasks.amazonaws.com"
                                        }
                                    },
                                },
                            ],
                        },
                    }
                ],
            },
        },
        "ReconcileSchedule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": "Audit reconciliation (central_llm_ops.reconcile) every 15 minutes",
                "ScheduleExpression": RECONCILE_SCHEDULE,
                "State": {"Fn::If": ["HasSidecarImage", "ENABLED", "DISABLED"]},
                "Targets": [
                    {
                        "Id": "audit-reconcile",
                        "Arn": get_att("Cluster", "Arn"),
                        "RoleArn": get_att("ReconcileScheduleRole", "Arn"),
                        "EcsParameters": {
                            "TaskDefinitionArn": ref("ReconcileTaskDefinition"),
                            "TaskCount": 1,
                            "LaunchType": "FARGATE",
                            "PlatformVersion": "LATEST",
                            "NetworkConfiguration": {
                                "AwsVpcConfiguration": {
                                    "Subnets": ref("SubnetIds"),
                                    "SecurityGroups": [ref("ReconcileSecurityGroup")],
                                    "AssignPublicIp": "DISABLED",
                                }
                            },
                        },
                    }
                ],
            },
        },
    }


def _alarms() -> dict[str, Json]:
    what = {
        "AuditRecordsMissing": "audit records are missing (seq gaps, deleted or truncated objects)",
        "AuditObjectsTampered": "audit objects or digests were modified, unlisted or mis-signed",
        "AuditItemsMissing": "audit records have no DynamoDB item",
        "AuditReconcileFailed": "the reconciliation itself could not run (see its log line)",
    }
    return {
        f"{name}Alarm": alarm(
            f"Reconciliation: {what[name]} (central-llm-audit-verify)",
            {
                "Namespace": AUDIT_NAMESPACE,
                "MetricName": name,
                "Dimensions": [{"Name": "AuditBucket", "Value": ref("AuditBucketName")}],
                "Statistic": "Maximum",
                "Period": RECONCILE_PERIOD_S,
            },
            threshold=0,
            periods=1,
            missing="notBreaching",
        )
        for name in (*RECONCILE_METRICS, "AuditReconcileFailed")
    }


def integrity_resources(reconcile_policy: dict[str, Any]) -> dict[str, Json]:
    return {
        **_signing_key(),
        "ReconcileTaskRole": task_role("audit-reconcile", reconcile_policy),
        "ReconcileTaskDefinition": _reconcile_task_definition(),
        **_schedule(),
        **_alarms(),
    }


def integrity_outputs() -> dict[str, Json]:
    return {
        "DigestSigningKeyArn": {
            "Value": get_att("DigestSigningKey", "Arn"),
            "Description": "KMS key of the digest signatures (verify --kms-key-id)",
        },
        "ReconcileTaskDefinitionArn": {
            "Value": ref("ReconcileTaskDefinition"),
            "Description": "Scheduled audit reconciliation task",
        },
    }


__all__ = [
    "integrity_conditions",
    "integrity_outputs",
    "integrity_parameters",
    "integrity_resources",
    "lock_days",
    "object_lock",
]
