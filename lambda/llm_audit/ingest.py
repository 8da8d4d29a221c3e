"""Lambda `llm-audit-ingest`: audit objects in S3 -> items in DynamoDB (`CentralLLMAudit`).

Entry point: `llm_audit.ingest.handler`. Packaged by `scripts/package-lambda.sh`
(the package folder at the zip's root); imports only the standard library and
boto3/botocore (which the python3.12 runtime provides).

What the invocation answers:

- an S3 event: the summary counts, or `IngestFailed` when anything failed, so
  Lambda retries the event and finally hands it to the DLQ `llm-audit-dlq`;
- an SQS event: `{"batchItemFailures": [{"itemIdentifier": <messageId>}]}` for
  the messages that failed (the event source mapping needs
  `FunctionResponseTypes: [ReportBatchItemFailures]`); they go back to the
  queue and, after its `maxReceiveCount`, to the DLQ.

Exactly one `ingest_summary` log line per invocation that got as far as
ingesting. The time budget is the context's remaining time less a margin.
"""

from __future__ import annotations

import json
import os
import sys
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


class IngestFailed(RuntimeError):
    """Raised for an S3 event with failures, so that Lambda retries it and then dead-letters it."""


def _client(service: str, settings: Settings) -> Any:
    """A client from boto3's default session, whose loaded service models are reused
    across warm invocations (a new Session would reload them: ~70 ms per invocation)."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30
    )
    return boto3.client(service, region_name=settings.region, config=config)


def answer(parsed: ParsedEvent, report: IngestReport) -> dict[str, Any]:
    """The invocation's result: partial batch failures for SQS; raise on S3 failures."""
    if parsed.source == "sqs":
        failed = [unit for unit in report.failed_units if unit is not None]
        return {"batchItemFailures": [{"itemIdentifier": unit} for unit in failed]}
    if report.failed_units:
        raise IngestFailed(json.dumps(report.summary()))
    return report.summary()


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
    report = ingest(
        parsed.units,
        S3Objects(_client("s3", settings), settings.archive_bucket),
        DynamoWriter(_client("dynamodb", settings), settings.table_name),
        settings.item_rules,
        Deadline.from_context(context, TIME_MARGIN_S, BUDGET_WITHOUT_CONTEXT_S),
        log,
    )
    log.info("ingest_summary", source=parsed.source, **report.summary())
    return answer(parsed, report)
