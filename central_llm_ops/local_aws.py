"""Create the audit pipeline's AWS resources on a local endpoint (moto), idempotently.

`ensure_audit_resources` makes, and on a second call merely confirms:

1. the audit bucket (and the raw archive bucket when one is named);
2. the DynamoDB table from `lambda/audit_table.json`, with TTL enabled;
3. the dead-letter queue and the ingestion queue, whose redrive policy sends a
   message to the DLQ after `max_receive_count` failed receives, and whose
   policy lets the bucket send to it;
4. the bucket notification `s3:ObjectCreated:*` on `<prefix>/` -> the queue
   (other notification entries of the bucket are kept).

Used by the tests, by the compose init container and by the no-Docker dev
pipeline. The CLI (`python -m central_llm_ops.local_aws`) reaches the endpoint
through the standard SDK variables (`AWS_ENDPOINT_URL`, ...) and prints the
resources as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError

from central_llm_ops.audit_table import create_table_kwargs, load_definition, ttl_attribute

NOTIFICATION_ID = "llm-audit-ingest"
DEFAULT_QUEUE = "llm-audit-events"
DEFAULT_DLQ = "llm-audit-dlq"


@dataclass(frozen=True)
class AwsClients:
    """The three low-level clients the pipeline's resources need."""

    s3: Any
    dynamodb: Any
    sqs: Any

    @classmethod
    def from_session(cls, session: boto3.session.Session) -> AwsClients:
        return cls(session.client("s3"), session.client("dynamodb"), session.client("sqs"))


@dataclass(frozen=True)
class AuditResources:
    bucket: str
    table: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    prefix: str
    archive_bucket: str | None = None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_bucket(s3: Any, bucket: str) -> None:
    region = s3.meta.region_name
    extra = (
        {}
        if region in (None, "us-east-1")
        else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    try:
        s3.create_bucket(Bucket=bucket, **extra)
    except ClientError as exc:
        if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def ensure_table(dynamodb: Any, table: str) -> None:
    definition = load_definition()
    try:
        dynamodb.create_table(**create_table_kwargs(definition, table))
    except ClientError as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    attribute = ttl_attribute(definition)
    status = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if attribute and status.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
        )


def ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    """(url, arn) of the queue, created or brought to the given attributes."""
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if "NonExistentQueue" not in _error_code(exc):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    else:
        if attributes:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def queue_policy(queue_arn: Any, bucket_arn: Any, account: Any | None = None) -> dict[str, Any]:
    """The ingest queue's policy: the audit bucket may send its notifications. Pure.

    The one definition, for the local stack (plain ARNs) and the CloudFormation
    template (ecs/stackgen/ingest.py passes intrinsic functions as the values).
    """
    condition: dict[str, Any] = {"ArnLike": {"aws:SourceArn": bucket_arn}}
    if account is not None:
        condition["StringEquals"] = {"aws:SourceAccount": account}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AuditBucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": condition,
            }
        ],
    }


def ensure_notification(s3: Any, bucket: str, queue_arn: str, prefix: str) -> None:
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    queues = [q for q in current.get("QueueConfigurations", []) if q.get("Id") != NOTIFICATION_ID]
    queues.append(
        {
            "Id": NOTIFICATION_ID,
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{prefix}/"}]}},
        }
    )
    current["QueueConfigurations"] = queues
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)


def ensure_audit_resources(
    session_or_clients: boto3.session.Session | AwsClients,
    bucket: str,
    table: str,
    queue_name: str,
    dlq_name: str,
    prefix: str,
    *,
    archive_bucket: str | None = None,
    max_receive_count: int = 3,
    visibility_timeout_s: int = 60,
) -> AuditResources:
    """Create (or confirm) bucket, table, queues and notification; see the module docstring."""
    clients = (
        session_or_clients
        if isinstance(session_or_clients, AwsClients)
        else AwsClients.from_session(session_or_clients)
    )
    prefix = prefix.strip("/")
    ensure_bucket(clients.s3, bucket)
    if archive_bucket:
        ensure_bucket(clients.s3, archive_bucket)
    ensure_table(clients.dynamodb, table)
    dlq_url, dlq_arn = ensure_queue(clients.sqs, dlq_name, {"MessageRetentionPeriod": "1209600"})
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
    queue_url, queue_arn = ensure_queue(
        clients.sqs,
        queue_name,
        {"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": str(visibility_timeout_s)},
    )
    clients.sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={"Policy": json.dumps(queue_policy(queue_arn, f"arn:aws:s3:::{bucket}"))},
    )
    ensure_notification(clients.s3, bucket, queue_arn, prefix)
    return AuditResources(
        bucket, table, queue_url, queue_arn, dlq_url, dlq_arn, prefix, archive_bucket
    )


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m central_llm_ops.local_aws",
        description="Create the audit bucket, table, queues and bucket notification "
        "(idempotent). The endpoint comes from AWS_ENDPOINT_URL and friends.",
    )
    parser.add_argument("--bucket", default=env.get("AUDIT_BUCKET", "central-llm-audit"))
    parser.add_argument("--table", default=env.get("TABLE_NAME", "CentralLLMAudit"))
    parser.add_argument("--prefix", default=env.get("AUDIT_PREFIX", "logs"))
    parser.add_argument("--queue", default=env.get("INGEST_QUEUE", DEFAULT_QUEUE))
    parser.add_argument("--dlq", default=env.get("INGEST_DLQ", DEFAULT_DLQ))
    parser.add_argument("--archive-bucket", default=env.get("ARCHIVE_BUCKET") or None)
    parser.add_argument("--max-receive-count", type=int, default=3)
    parser.add_argument("--region", default=env.get("AWS_REGION") or None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    resources = ensure_audit_resources(
        boto3.session.Session(region_name=args.region),
        args.bucket,
        args.table,
        args.queue,
        args.dlq,
        args.prefix,
        archive_bucket=args.archive_bucket,
        max_receive_count=args.max_receive_count,
    )
    sys.stdout.write(json.dumps(asdict(resources)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
