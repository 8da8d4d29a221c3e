"""Re-process the events waiting in the ingestion's dead-letter queue (`llm-audit-dlq`).

`central-llm-dlq-redrive` (or `python -m central_llm_ops.dlq_redrive`) receives
the DLQ's messages in batches and hands them to `llm_audit.ingest.handler` as
an SQS event, in this process. Both kinds of DLQ message work: the S3
notification a failed SQS message carried (S3 -> SQS -> Lambda) and the event
of a failed asynchronous invocation (S3 -> Lambda, whose DLQ message body is
the event itself).

Invariants:

- A message is deleted only after the handler accepted it (everything in it
  was ingested); a message that failed again stays in the DLQ, and is made
  visible again at the end of the run, so the next run sees it at once.
- A run visits each message at most once (the messages it failed are hidden
  for the run's duration), so it always ends.
- `--dry-run` lists the messages (id, age, receive count, objects, the error
  Lambda recorded) and changes nothing.

Exit status: 0 when every visited message was redriven, 1 when some stayed.
The handler reads the Lambda's environment (`TABLE_NAME`, ...) and the
endpoint the standard SDK variables. Output: JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from central_llm_ops.ingest_sqs import Handler, process_batch, queue_arn_of, queue_url_of
from central_llm_ops.local_aws import DEFAULT_DLQ
from llm_audit.events import objects_in
from llm_audit.ingest import handler as ingest_handler
from llm_audit.log import JsonLog


@dataclass(frozen=True)
class RedriveOptions:
    dlq: str
    max_messages: int | None = None
    batch_size: int = 10
    hide_s: int = 900
    budget_s: float = 300.0
    prefix: str = "logs"


@dataclass
class RedriveResult:
    redriven: int = 0
    failed: int = 0
    listed: int = 0


def describe(message: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """What an operator needs to judge a DLQ message, without its record content."""
    attributes = message.get("Attributes", {})
    errors = {
        name: value.get("StringValue")
        for name, value in message.get("MessageAttributes", {}).items()
        if name in ("ErrorCode", "ErrorMessage", "RequestID")
    }
    try:
        objects, _ = objects_in(json.loads(message.get("Body") or ""), prefix)
        keys: list[str] | str = [f"s3://{o.bucket}/{o.key}" for o in objects]
    except (KeyError, TypeError, ValueError):
        keys = "not an S3 notification"
    return {
        "messageId": message["MessageId"],
        "sentTimestamp": attributes.get("SentTimestamp"),
        "receiveCount": attributes.get("ApproximateReceiveCount"),
        "objects": keys,
        **errors,
    }


class Redrive:
    def __init__(self, sqs: Any, options: RedriveOptions, handler: Handler, log: JsonLog) -> None:
        self._sqs = sqs
        self._options = options
        self._handler = handler
        self._log = log

    def _receive(self, queue_url: str, count: int) -> list[dict[str, Any]]:
        answer = self._sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=1,
            VisibilityTimeout=self._options.hide_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages

    def _wanted(self, visited: int) -> int:
        """How many messages to ask for next (0: the run is over)."""
        limit = self._options.max_messages
        if limit is None:
            return self._options.batch_size
        return max(0, min(self._options.batch_size, limit - visited))

    def run(self, dry_run: bool = False) -> RedriveResult:
        queue_url = queue_url_of(self._sqs, self._options.dlq)
        queue_arn = queue_arn_of(self._sqs, queue_url)
        result = RedriveResult()
        hidden: list[Mapping[str, Any]] = []
        visited = 0
        while (wanted := self._wanted(visited)) > 0:
            messages = self._receive(queue_url, wanted)
            if not messages:
                break
            visited += len(messages)
            if dry_run:
                for message in messages:
                    self._log.info("dlq_message", **describe(message, self._options.prefix))
                result.listed += len(messages)
                hidden.extend(messages)
                continue
            batch = process_batch(
                self._sqs,
                queue_url,
                queue_arn,
                messages,
                self._handler,
                self._options.budget_s,
                self._log,
            )
            result.redriven += len(batch.succeeded)
            result.failed += len(batch.failed)
            for failed in batch.failed:
                self._log.warning("redrive_failed", **describe(failed, self._options.prefix))
            hidden.extend(batch.failed)
        self._reveal(queue_url, hidden)
        return result

    def _reveal(self, queue_url: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """Make the messages this run kept hidden visible again, ten at a time."""
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            self._sqs.change_message_visibility_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="central-llm-dlq-redrive",
        description="Re-process the ingestion events in the DLQ; delete each one only "
        "after it was ingested.",
    )
    parser.add_argument(
        "--dlq",
        default=os.environ.get("INGEST_DLQ", DEFAULT_DLQ),
        help="DLQ URL or name (env INGEST_DLQ; default %(default)s)",
    )
    parser.add_argument("--max-messages", type=int, default=None, help="stop after this many")
    parser.add_argument("--dry-run", action="store_true", help="list the messages, change nothing")
    parser.add_argument(
        "--budget-seconds", type=float, default=300.0, help="the handler's time per batch"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = RedriveOptions(
        args.dlq,
        max_messages=args.max_messages,
        budget_s=args.budget_seconds,
        prefix=os.environ.get("AUDIT_PREFIX", "logs").strip("/"),
    )
    log = JsonLog(sys.stdout, logger="central-llm-dlq-redrive")
    sqs = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None).client("sqs")
    result = Redrive(sqs, options, ingest_handler, log).run(dry_run=args.dry_run)
    log.info(
        "redrive_done",
        redriven=result.redriven,
        failed=result.failed,
        listed=result.listed,
        dryRun=args.dry_run,
    )
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
