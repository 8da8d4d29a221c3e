"""The audit bucket (where the sidecar ships records) and the raw archive bucket.

Both: KMS encryption by default (the account's `aws/s3` key, bucket keys on),
TLS-only bucket policy, versioning, Object Lock with a default retention
(integrity.py), no public access, lifecycle to cheaper storage classes,
noncurrent versions kept at least as long as their lock, retained when the
stack is deleted. The audit bucket notifies
the ingestion queue of every object created under `<AuditPrefix>/`; it depends
on the queue policy because S3 checks that it may send before it accepts the
notification configuration.
"""

from __future__ import annotations

from ecs.stackgen.cfn import Json, get_att, ref, sub
from ecs.stackgen.integrity import lock_days, object_lock

_RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}


def _lifecycle() -> Json:
    return {
        "Rules": [
            {
                "Id": "tier-down-and-tidy",
                "Status": "Enabled",
                "Transitions": [
                    {"StorageClass": "STANDARD_IA", "TransitionInDays": ref("StandardIaAfterDays")},
                    {"StorageClass": "GLACIER_IR", "TransitionInDays": ref("GlacierIrAfterDays")},
                ],
                # Never before the version's lock ends: a version turns noncurrent no
                # earlier than it was written (and locked), so the lock period suffices.
                "NoncurrentVersionExpiration": {"NoncurrentDays": lock_days()},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            }
        ]
    }


def _bucket(name_parameter: str, extra: Json | None = None) -> Json:
    properties: Json = {
        "BucketName": ref(name_parameter),
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {
                    "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
                    "BucketKeyEnabled": True,
                }
            ]
        },
        "VersioningConfiguration": {"Status": "Enabled"},
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "LifecycleConfiguration": _lifecycle(),
        **object_lock(),
    }
    properties.update(extra or {})
    return {"Type": "AWS::S3::Bucket", **_RETAIN, "Properties": properties}


def _tls_only(bucket: str) -> Json:
    bucket_arn = get_att(bucket, "Arn")
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": ref(bucket),
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [bucket_arn, {"Fn::Join": ["", [bucket_arn, "/*"]]}],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            },
        },
    }


def audit_notification() -> Json:
    """S3 -> SQS: every object created under the audit prefix."""
    return {
        "QueueConfigurations": [
            {
                "Event": "s3:ObjectCreated:*",
                "Queue": get_att("IngestQueue", "Arn"),
                "Filter": {
                    "S3Key": {"Rules": [{"Name": "prefix", "Value": sub("${AuditPrefix}/")}]}
                },
            }
        ]
    }


def storage_resources() -> dict[str, Json]:
    audit = _bucket("AuditBucketName", {"NotificationConfiguration": audit_notification()})
    audit["DependsOn"] = ["IngestQueuePolicy"]
    return {
        "AuditBucket": audit,
        "AuditBucketPolicy": _tls_only("AuditBucket"),
        "ArchiveBucket": _bucket("ArchiveBucketName"),
        "ArchiveBucketPolicy": _tls_only("ArchiveBucket"),
    }
