"""The ingestion without Lambda: long-poll the queue of the bucket's notifications, run the handler.

`central-llm-ingest-runner` (or `python -m central_llm_ops.ingest_runner`) does
what Lambda's SQS event source mapping does for `llm-audit-ingest`: receive up
to 10 messages (long poll), call `llm_audit.ingest.handler` with an SQS event,
delete the messages it accepted and leave the others. A message left behind
becomes visible again after the queue's visibility timeout; after the queue's
`maxReceiveCount` receives SQS moves it to the DLQ (`llm-audit-dlq`).

The handler is configured by the same environment as the Lambda (`TABLE_NAME`,
`AUDIT_PREFIX`, `MAX_PREVIEW_CHARS`, `RETENTION_DAYS`, `ARCHIVE_BUCKET`,
`AWS_REGION`); the endpoint by the standard SDK variables (`AWS_ENDPOINT_URL`).

SIGTERM/SIGINT stop it after the batch in hand (at most one long poll later),
exit status 0. With `--until-empty` it exits once a receive comes back empty.
Logs: JSON lines on stdout (the handler's own lines included).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from central_llm_ops.ingest_sqs import Handler, process_batch, queue_arn_of, queue_url_of
from central_llm_ops.local_aws import DEFAULT_QUEUE
from llm_audit.ingest import handler as ingest_handler
from llm_audit.log import JsonLog

RECEIVE_ERROR_PAUSE_S = 5.0


@dataclass(frozen=True)
class RunnerOptions:
    queue: str
    wait_seconds: int = 20
    batch_size: int = 10
    budget_s: float = 300.0
    until_empty: bool = False


class Runner:
    """The poll loop; `stop()` (or a signal) ends it after the current batch."""

    def __init__(self, sqs: Any, options: RunnerOptions, handler: Handler, log: JsonLog) -> None:
        self._sqs = sqs
        self._options = options
        self._handler = handler
        self._log = log
        self._stopping = threading.Event()

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        self._log.info("runner_stopping", signal=signum)
        self._stopping.set()

    def run(self) -> int:
        queue_url = queue_url_of(self._sqs, self._options.queue)
        queue_arn = queue_arn_of(self._sqs, queue_url)
        self._log.info("runner_started", queue=queue_url)
        totals = {"batches": 0, "succeeded": 0, "failed": 0}
        while not self._stopping.is_set():
            try:
                messages = self._receive(queue_url)
            except (BotoCoreError, ClientError) as exc:
                self._log.error("receive_failed", error=type(exc).__name__)
                self._stopping.wait(RECEIVE_ERROR_PAUSE_S)
                continue
            if not messages:
                if self._options.until_empty:
                    break
                continue
            result = process_batch(
                self._sqs,
                queue_url,
                queue_arn,
                messages,
                self._handler,
                self._options.budget_s,
                self._log,
            )
            totals["batches"] += 1
            totals["succeeded"] += len(result.succeeded)
            totals["failed"] += len(result.failed)
        self._log.info("runner_stopped", **totals)
        return 0

    def _receive(self, queue_url: str) -> list[dict[str, Any]]:
        answer = self._sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=self._options.batch_size,
            WaitTimeSeconds=self._options.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="central-llm-ingest-runner",
        description="Long-poll the audit notification queue and run the ingestion handler "
        "on each batch (the Lambda's SQS trigger, without Lambda).",
    )
    parser.add_argument(
        "--queue",
        default=os.environ.get("INGEST_QUEUE", DEFAULT_QUEUE),
        help="queue URL or name (env INGEST_QUEUE; default %(default)s)",
    )
    parser.add_argument("--wait-seconds", type=int, default=20, help="long-poll wait (0-20)")
    parser.add_argument("--batch-size", type=int, default=10, help="messages per batch (1-10)")
    parser.add_argument(
        "--budget-seconds", type=float, default=300.0, help="the handler's time per batch"
    )
    parser.add_argument(
        "--until-empty", action="store_true", help="exit when a receive returns no message"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli = _parser()
    args = cli.parse_args(argv)
    if not 0 <= args.wait_seconds <= 20 or not 1 <= args.batch_size <= 10:
        cli.error("--wait-seconds must be 0-20 and --batch-size 1-10 (SQS limits)")
    options = RunnerOptions(
        args.queue, args.wait_seconds, args.batch_size, args.budget_seconds, args.until_empty
    )
    log = JsonLog(sys.stdout, logger="central-llm-ingest-runner")
    sqs = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None).client("sqs")
    runner = Runner(sqs, options, ingest_handler, log)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
