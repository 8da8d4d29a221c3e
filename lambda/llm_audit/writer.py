"""Write items to DynamoDB with BatchWriteItem: groups of 25, retries inside a time budget.

The writer is thin on purpose: it takes an injected low-level DynamoDB client
(anything with `batch_write_item(RequestItems=...)`) and plain-Python items.

Invariants:

- Items are consumed lazily, one group at a time, so an object's items are
  never all in memory. A group never holds two requests for one key (which
  DynamoDB refuses): a later item with the key of one already in the group
  replaces it. Groups are written in order, each retried before the next one
  starts, so across groups too the later record wins.
- A group holds at most 25 put requests (the BatchWriteItem limit).
- Each item is serialised once, when it joins a group; an item the serializer
  refuses fails alone (`FailedItem`), it never stops the stream.
- `UnprocessedItems` and throttling/transient errors are retried with
  exponential backoff (capped, jittered) while the `Deadline` allows another
  attempt; what is still unwritten then is reported as failed, never dropped
  silently and never retried past the budget.
- A `ValidationException` rejects the whole group, so the group is retried one
  item at a time: only the invalid item fails. Other errors (missing table,
  access denied) fail the group at once.

Errors from botocore are classified in one place, `_classify`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

GROUP_SIZE = 25
KEY_ATTRIBUTES = ("id", "createdAt")
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)


class BatchWriteClient(Protocol):
    def batch_write_item(self, **kwargs: Any) -> Mapping[str, Any]: ...


class Deadline:
    """A point in monotonic time after which no new attempt may start."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = clock() + seconds

    def remaining(self) -> float:
        return self._at - self._clock()

    @classmethod
    def from_context(cls, context: object, margin_s: float, default_s: float) -> Deadline:
        """The Lambda context's remaining time less a safety margin (default without one)."""
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        seconds = remaining_ms() / 1000 if callable(remaining_ms) else default_s
        return cls(max(0.0, seconds - margin_s))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with 'equal jitter': half fixed, half random."""

    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class FailedItem:
    item: Mapping[str, Any]
    reason: str


@dataclass
class WriteOutcome:
    written: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    calls: int = 0
    retries: int = 0


def item_key(item: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(item.get(name) for name in KEY_ATTRIBUTES)


@dataclass(frozen=True)
class _Put:
    """An item and its wire form (DynamoDB's typed JSON)."""

    item: Mapping[str, Any]
    wire: dict[str, Any]


def _classify(exc: Exception) -> Literal["retry", "split", "fail"]:
    """What to do after an exception from one BatchWriteItem call."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in RETRYABLE_CODES:
            return "retry"
        return "split" if code == "ValidationException" else "fail"
    return "retry"  # BotoCoreError: connection reset, timeout, endpoint unreachable


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class DynamoWriter:
    """Puts items into one table; see the module docstring for the guarantees."""

    def __init__(
        self,
        client: BatchWriteClient,
        table: str,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 12,
    ) -> None:
        self._client = client
        self._table = table
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._serialise = TypeSerializer().serialize

    def write(self, items: Iterable[Mapping[str, Any]], deadline: Deadline) -> WriteOutcome:
        """Write every item (consumed lazily, 25 at a time); see the module docstring."""
        outcome = WriteOutcome()
        group: dict[tuple[Any, ...], _Put] = {}
        for item in items:
            put = self._put(item, outcome)
            if put is None:
                continue
            key = item_key(item)
            if key not in group and len(group) == GROUP_SIZE:
                self._write_group(list(group.values()), deadline, outcome)
                group = {}
            group[key] = put
        if group:
            self._write_group(list(group.values()), deadline, outcome)
        return outcome

    def _put(self, item: Mapping[str, Any], outcome: WriteOutcome) -> _Put | None:
        try:
            wire = {name: self._serialise(value) for name, value in item.items()}
        except (TypeError, ValueError, ArithmeticError) as exc:
            outcome.failed.append(FailedItem(item, f"not serialisable: {type(exc).__name__}"))
            return None
        return _Put(item, wire)

    def _write_group(
        self, group: Sequence[_Put], deadline: Deadline, outcome: WriteOutcome
    ) -> None:
        pending = list(group)
        last_problem = "UnprocessedItems"
        for attempt in range(self._max_attempts):
            if attempt and not self._pause(attempt - 1, deadline, outcome):
                last_problem += ", time budget exhausted"
                break
            try:
                outcome.calls += 1
                answer = self._client.batch_write_item(
                    RequestItems={self._table: [{"PutRequest": {"Item": p.wire}} for p in pending]}
                )
            except (ClientError, BotoCoreError) as exc:
                action = _classify(exc)
                if action == "retry":
                    last_problem = _reason(exc)
                    continue
                if action == "split" and len(pending) > 1:
                    for put in pending:
                        self._write_group([put], deadline, outcome)
                else:
                    outcome.failed.extend(FailedItem(p.item, _reason(exc)) for p in pending)
                return
            left = _unprocessed_keys(answer, self._table)
            outcome.written += len(pending) - len(left)
            pending = [p for p in pending if item_key(p.item) in left]
            if not pending:
                return
            last_problem = "UnprocessedItems"
        else:
            last_problem += f", {self._max_attempts} attempts"
        outcome.failed.extend(FailedItem(p.item, last_problem) for p in pending)

    def _pause(self, attempt: int, deadline: Deadline, outcome: WriteOutcome) -> bool:
        """Sleep before a retry; False when the budget cannot fit the pause and a call."""
        delay = self._backoff.delay(attempt)
        if deadline.remaining() <= delay:
            return False
        outcome.retries += 1
        self._sleep(delay)
        return True


def _unprocessed_keys(answer: Mapping[str, Any], table: str) -> set[tuple[Any, ...]]:
    """Primary keys (plain values) of the put requests DynamoDB sent back unprocessed."""
    keys: set[tuple[Any, ...]] = set()
    for request in answer.get("UnprocessedItems", {}).get(table, []):
        item = request["PutRequest"]["Item"]
        keys.add(tuple(next(iter(item[name].values())) for name in KEY_ATTRIBUTES))
    return keys
