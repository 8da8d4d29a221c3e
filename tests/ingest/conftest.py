"""Fixtures for the ingestion tests: a fresh audit stack on moto per test, and a proxy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from central_llm_ops.local_aws import AuditResources, AwsClients, ensure_audit_resources
from tests.ingest.aws_proxy import AwsProxy


@dataclass
class Stack:
    endpoint: str
    resources: AuditResources
    s3: Any
    ddb: Any
    sqs: Any

    @property
    def bucket(self) -> str:
        return self.resources.bucket

    @property
    def table(self) -> str:
        return self.resources.table

    def env(self) -> dict[str, str]:
        """The Lambda's environment for this stack (plus the endpoint)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "TABLE_NAME": self.table,
            "AUDIT_PREFIX": self.resources.prefix,
        }


def clients(endpoint: str) -> AwsClients:
    session = boto3.session.Session(region_name="eu-central-1")
    return AwsClients(
        session.client("s3", endpoint_url=endpoint),
        session.client("dynamodb", endpoint_url=endpoint),
        session.client("sqs", endpoint_url=endpoint),
    )


@pytest.fixture
def stack(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Uniquely named resources, and the handler's environment pointing at them."""
    suffix = uuid.uuid4().hex[:10]
    aws = clients(moto_server)
    resources = ensure_audit_resources(
        aws,
        bucket=f"audit-{suffix}",
        table=f"CentralLLMAudit-{suffix}",
        queue_name=f"llm-audit-events-{suffix}",
        dlq_name=f"llm-audit-dlq-{suffix}",
        prefix="logs",
        archive_bucket=f"audit-raw-{suffix}",
        max_receive_count=2,
        visibility_timeout_s=1,
    )
    built = Stack(moto_server, resources, aws.s3, aws.dynamodb, aws.sqs)
    for name, value in built.env().items():
        monkeypatch.setenv(name, value)
    for name in ("ARCHIVE_BUCKET", "RETENTION_DAYS", "MAX_PREVIEW_CHARS"):
        monkeypatch.delenv(name, raising=False)
    yield built


@pytest.fixture
def aws_proxy(moto_server: str) -> Iterator[AwsProxy]:
    """A recording (and, on demand, throttling) HTTP proxy in front of moto."""
    proxy = AwsProxy(moto_server).start()
    yield proxy
    proxy.stop()
