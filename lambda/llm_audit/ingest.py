"""Lambda `llm-audit-ingest`: audit objects in S3 -> items in DynamoDB (`CentralLLMAudit`).

Entry point: `llm_audit.ingest.handler`. Packaged by `scripts/package-lambda.sh`
(the package folder at the zip's root); imports only the standard library and
boto3/botocore (which the python3.12 runtime provides).

What the invocation answers:

- an S3 event: the summary counts, or `IngestFailed` when anything failed, so
  Lambda retries the event and finally hands it to the DLQ `llm-audit-dlq`;
  the error's message carries the first failure reasons (the DLQ message's
  `ErrorMessage`);
- an SQS event: `{"batchItemFailures": [{"itemIdentifier": <messageId>}]}` for
  the messages that failed (the event source mapping needs
  `FunctionResponseTypes: [ReportBatchItemFailures]`); they go back to the
  queue and, after its `maxReceiveCount`, to the DLQ. When *every* message
  failed it raises `IngestFailed` instead (Powertools'
  `raise_on_entire_batch_failure`): for Lambda the outcome is the same (the
  whole batch returns to the queue) but the invocation counts in the `Errors`
  metric, so a broken table or policy sets off the alarm.

Exactly one `ingest_summary` log line per invocation that got as far as
ingesting. The time budget is the context's remaining time less a margin.

Clients are made on the first invocation and reused by the warm ones (one
container serves invocations one at a time): creating the two clients costs
~15 ms of CPU, as much as ingesting a small object. They are cached by the
environment they were made from (region, endpoints, credentials), so a
process whose environment changes (tests, tools) never reuses stale ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from llm_audit.config import ConfigError, Settings
from llm_audit.events import ParsedEvent, UnknownEvent, parse_event
from llm_audit.log import JsonLog
from llm_audit.pipeline import IngestReport, ingest
from llm_audit.s3 import S3Objects
from llm_audit.writer import Deadline, DynamoWriter

TIME_MARGIN_S = 3.0
BUDGET_WITHOUT_CONTEXT_S = 300.0
# What boto3 reads from the environment when it makes a client.
CLIENT_ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
)


class IngestFailed(RuntimeError):
    """Raised for an S3 event with failures, so that Lambda retries it and then dead-letters it."""


def client_fingerprint(env: Mapping[str, str]) -> str:
    """A digest of the client-relevant environment (a digest: no secret is kept as a key)."""
    text = json.dumps([env.get(name) for name in CLIENT_ENVIRONMENT])
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=4)
def cached_clients(region: str | None, fingerprint: str) -> tuple[Any, Any]:
    """(s3, dynamodb) clients, made once per region and environment in this process.

    The one piece of process-wide state in the package, on purpose: Lambda keeps
    the process between invocations, and so keeps these clients and their
    connection pools. A fresh Session each time, so credentials are read from
    the environment the fingerprint describes, not from an older default session.
    """
    del fingerprint  # part of the cache key only
    session = boto3.session.Session(region_name=region)
    config = Config(
        retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30
    )
    return session.client("s3", config=config), session.client("dynamodb", config=config)


def answer(parsed: ParsedEvent, report: IngestReport) -> dict[str, Any]:
    """The invocation's result: partial batch failures for SQS; raise on S3 failures
    and when every message of an SQS batch failed."""
    if parsed.source == "sqs":
        failed = [unit for unit in report.failed_units if unit is not None]
        if failed and len(failed) == len(parsed.units):
            raise IngestFailed(_failure_text("every message of the batch failed", report))
        return {"batchItemFailures": [{"itemIdentifier": unit} for unit in failed]}
    if report.failed_units:
        raise IngestFailed(_failure_text("the event failed", report))
    return report.summary()


def _failure_text(what: str, report: IngestReport) -> str:
    return json.dumps({"error": what, **report.summary(), "reasons": report.reasons})


def _understand(event: dict[str, Any], log: JsonLog) -> tuple[Settings, ParsedEvent]:
    """Settings and the parsed event; a bad setting or event is logged, then raised."""
    try:
        settings = Settings.from_env(os.environ)
        return settings, parse_event(event, settings.audit_prefix)
    except ConfigError as exc:
        log.error("config_invalid", reason=str(exc))
        raise
    except UnknownEvent:
        log.error("unknown_event", keys=sorted(event)[:10] if isinstance(event, dict) else None)
        raise


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    log = JsonLog(sys.stdout, requestId=getattr(context, "aws_request_id", None))
    settings, parsed = _understand(event, log)
    s3, dynamodb = cached_clients(settings.region, client_fingerprint(os.environ))
    report = ingest(
        parsed.units,
        S3Objects(s3, settings.archive_bucket),
        DynamoWriter(dynamodb, settings.table_name),
        settings.item_rules,
        settings.limits,
        Deadline.from_context(context, TIME_MARGIN_S, BUDGET_WITHOUT_CONTEXT_S),
        log,
    )
    log.info("ingest_summary", source=parsed.source, **report.summary())
    return answer(parsed, report)
