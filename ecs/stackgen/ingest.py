"""Ingestion: the DynamoDB table, the notification queue with its DLQ, and the Lambda.

S3 notifies an SQS queue, not the Lambda directly: the queue absorbs bursts and
Lambda throttling, retries a failed batch by visibility timeout, moves a
message that failed `maxReceiveCount` times to `llm-audit-dlq` (redriven by
`central-llm-dlq-redrive`), and is the same path the local compose runner
polls, so production and laptop share one code path. The Lambda reports
failures per message (`ReportBatchItemFailures`), so one bad object never makes
its batch neighbours retry.

The table is `lambda/audit_table.json` carried over key by key; the visibility
timeout is six times the function timeout, as AWS advises for SQS sources.
"""

from __future__ import annotations

import copy
from typing import Any

from central_llm_ops.local_aws import queue_policy
from ecs.stackgen.cfn import Json, get_att, ref, sub, substitute

FUNCTION_TIMEOUT_S = 60
MAX_RECEIVE_COUNT = 5


def table_resource(table: dict[str, Any]) -> Json:
    billing = table.get("BillingMode", "PAY_PER_REQUEST")
    properties: Json = {
        "TableName": ref("TableName"),
        "BillingMode": billing,
        "AttributeDefinitions": copy.deepcopy(table["AttributeDefinitions"]),
        "KeySchema": copy.deepcopy(table["KeySchema"]),
    }
    indexes = copy.deepcopy(table.get("GlobalSecondaryIndexes", []))
    if billing == "PAY_PER_REQUEST":
        for index in indexes:
            index.pop("ProvisionedThroughput", None)
    if indexes:
        properties["GlobalSecondaryIndexes"] = indexes
    ttl = table.get("TimeToLiveAttribute")
    if ttl:
        properties["TimeToLiveSpecification"] = {"AttributeName": ttl, "Enabled": True}
    properties["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    properties["SSESpecification"] = {"SSEEnabled": True}
    properties["DeletionProtectionEnabled"] = True
    return {
        "Type": "AWS::DynamoDB::Table",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": properties,
    }


def _queues() -> dict[str, Json]:
    return {
        "Dlq": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": ref("DlqName"),
                "MessageRetentionPeriod": 1209600,
                "SqsManagedSseEnabled": True,
            },
        },
        "IngestQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": ref("IngestQueueName"),
                "VisibilityTimeout": 6 * FUNCTION_TIMEOUT_S,
                "MessageRetentionPeriod": 345600,
                "ReceiveMessageWaitTimeSeconds": 20,
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": get_att("Dlq", "Arn"),
                    "maxReceiveCount": MAX_RECEIVE_COUNT,
                },
            },
        },
        "IngestQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [ref("IngestQueue")],
                "PolicyDocument": queue_policy(
                    get_att("IngestQueue", "Arn"),
                    sub("arn:${AWS::Partition}:s3:::${AuditBucketName}"),
                    ref("AWS::AccountId"),
                ),
            },
        },
    }


def _function(ingest_policy: dict[str, Any]) -> dict[str, Json]:
    return {
        "IngestFunctionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [
                    {"PolicyName": "llm-audit-ingest", "PolicyDocument": substitute(ingest_policy)}
                ],
            },
        },
        "IngestLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "LogGroupName": sub("/aws/lambda/${IngestFunctionName}"),
                "RetentionInDays": 90,
            },
        },
        "IngestFunction": {
            "Type": "AWS::Lambda::Function",
            "DependsOn": ["IngestLogGroup"],
            "Properties": {
                "FunctionName": ref("IngestFunctionName"),
                "Description": "Indexes audit objects from S3 into DynamoDB",
                "Runtime": "python3.12",
                "Handler": "llm_audit.ingest.handler",
                "Architectures": ["arm64"],
                "MemorySize": 512,
                "Timeout": FUNCTION_TIMEOUT_S,
                "Role": get_att("IngestFunctionRole", "Arn"),
                "Code": {"S3Bucket": ref("LambdaCodeBucket"), "S3Key": ref("LambdaCodeKey")},
                "Environment": {
                    "Variables": {
                        "TABLE_NAME": ref("TableName"),
                        "AUDIT_PREFIX": ref("AuditPrefix"),
                        "MAX_PREVIEW_CHARS": "2048",
                        "RETENTION_DAYS": {
                            "Fn::If": ["HasRetention", ref("RetentionDays"), ref("AWS::NoValue")]
                        },
                        "ARCHIVE_BUCKET": ref("ArchiveBucketName"),
                    }
                },
            },
        },
        "IngestEventSourceMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "EventSourceArn": get_att("IngestQueue", "Arn"),
                "FunctionName": ref("IngestFunction"),
                "BatchSize": 10,
                "MaximumBatchingWindowInSeconds": 5,
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "Enabled": True,
            },
        },
    }


def ingest_resources(table: dict[str, Any], ingest_policy: dict[str, Any]) -> dict[str, Json]:
    return {"AuditTable": table_resource(table), **_queues(), **_function(ingest_policy)}
