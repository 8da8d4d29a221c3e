"""The operators' read-only role: `central-llm-audit-query` and compliance reads, nothing else.

`AuditReaderRole` carries `ecs/policies/audit-reader.json` (query the table
and its indexes, read audit objects under the prefix). It is assumable by
principals of this account that the account's own IAM policies allow to
assume it, and only with MFA; it can neither write nor delete anything
(tests/deploy/test_iam_enforced.py runs the query tool under exactly this
policy against an IAM-enforcing moto).
"""

from __future__ import annotations

from typing import Any

from ecs.stackgen.cfn import Json, sub, substitute


def operator_resources(reader_policy: dict[str, Any]) -> dict[str, Json]:
    return {
        "AuditReaderRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "Read-only: audit items and records (central-llm-audit-query)",
                "MaxSessionDuration": 3600,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {
                                "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")
                            },
                            "Action": "sts:AssumeRole",
                            "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}},
                        }
                    ],
                },
                "Policies": [
                    {"PolicyName": "audit-reader", "PolicyDocument": substitute(reader_policy)}
                ],
            },
        }
    }
