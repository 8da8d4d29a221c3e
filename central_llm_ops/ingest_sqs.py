"""Feed SQS messages to the ingestion handler as Lambda's SQS event source does.

Shared by the local runner and the DLQ redrive, so both exercise the exact
code path of the deployed function (`llm_audit.ingest.handler` on an SQS
event with partial batch responses).

Invariants:

- A message is deleted only when the handler answered and did not list it in
  `batchItemFailures`. If the handler raises, no message is deleted: every
  one of them stays in its queue (Lambda treats a raised error the same way).
- The handler gets a context whose remaining time counts down from the given
  budget, so its retry budget works as in Lambda.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_audit.log import JsonLog

Handler = Callable[[dict[str, Any], Any], Any]


class LocalContext:
    """The parts of Lambda's context object the handler uses."""

    function_name = "llm-audit-ingest"

    def __init__(self, budget_s: float) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + budget_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def queue_url_of(sqs: Any, queue: str) -> str:
    """A queue URL from a URL or a name."""
    if queue.startswith(("http://", "https://")):
        return queue
    url: str = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    return url


def queue_arn_of(sqs: Any, queue_url: str) -> str:
    answer = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    arn: str = answer["Attributes"]["QueueArn"]
    return arn


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The Lambda SQS event for messages as ReceiveMessage returned them."""
    region = queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else ""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m.get("Body", ""),
                "attributes": dict(m.get("Attributes", {})),
                "messageAttributes": dict(m.get("MessageAttributes", {})),
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


@dataclass
class BatchResult:
    succeeded: list[str] = field(default_factory=list)
    failed: list[Mapping[str, Any]] = field(default_factory=list)


def failed_ids(answer: Any) -> set[str]:
    """Message ids listed in a handler's partial batch response."""
    failures = answer.get("batchItemFailures", []) if isinstance(answer, dict) else []
    return {str(f["itemIdentifier"]) for f in failures}


def process_batch(
    sqs: Any,
    queue_url: str,
    queue_arn: str,
    messages: Sequence[Mapping[str, Any]],
    handler: Handler,
    budget_s: float,
    log: JsonLog,
) -> BatchResult:
    """Run the handler on received messages; delete the ones it accepted."""
    result = BatchResult()
    try:
        answer = handler(sqs_event(messages, queue_arn), LocalContext(budget_s))
    except Exception as exc:  # the handler's failure must never stop the loop
        log.error("handler_failed", error=type(exc).__name__, messages=len(messages))
        result.failed.extend(messages)
        return result
    rejected = failed_ids(answer)
    done = [m for m in messages if m["MessageId"] not in rejected]
    result.failed.extend(m for m in messages if m["MessageId"] in rejected)
    if done:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
        deleted = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        ok = {int(e["Id"]) for e in deleted.get("Successful", [])}
        for i, message in enumerate(done):
            if i in ok:
                result.succeeded.append(message["MessageId"])
            else:
                log.warning("delete_failed", messageId=message["MessageId"])
    return result
