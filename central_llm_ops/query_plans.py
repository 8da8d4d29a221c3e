"""The audit questions as DynamoDB requests, and their paginated execution.

One function per question builds the Query (or Scan) arguments; they are pure
and name the index the question was made for:

| question | index | key condition | order |
| --- | --- | --- | --- |
| a user's requests | `GSI_UserTime` | userId, createdAt in range | time |
| requests by status | `GSI_StatusTime` | statusCode, createdAt in range | time |
| a project's slowest | `GSI_ProjectLatency` | projectId (range as a filter) | latency, descending |
| a project's requests | table | id = project#p, createdAt in range | time |
| one request by id | table (Query with a project, else Scan) | filter on requestId | - |

`AuditReader` runs them with a low-level DynamoDB client: it follows
`LastEvaluatedKey` page by page, stops at the limit after filtering, merges
several status codes in time order, and adds the previews (which the GSIs do
not project, to keep index writes small) with BatchGetItem when asked.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from central_llm_ops.audit_timerange import TimeRange

PREVIEWS = ("promptPreview", "responsePreview")
BATCH_GET_SIZE = 100

Item = dict[str, Any]


def _values(**values: Any) -> dict[str, Any]:
    serialise = TypeSerializer().serialize
    return {f":{name}": serialise(value) for name, value in values.items()}


def _time_order(newest_first: bool) -> dict[str, Any]:
    return {"ScanIndexForward": not newest_first}


def by_user(table: str, user: str, span: TimeRange, newest_first: bool = True) -> dict[str, Any]:
    low, high = span.bounds()
    return {
        "TableName": table,
        "IndexName": "GSI_UserTime",
        "KeyConditionExpression": "userId = :key AND createdAt BETWEEN :low AND :high",
        "ExpressionAttributeValues": _values(key=user, low=low, high=high),
        **_time_order(newest_first),
    }


def by_status(
    table: str, status: int, span: TimeRange, newest_first: bool = True
) -> dict[str, Any]:
    low, high = span.bounds()
    return {
        "TableName": table,
        "IndexName": "GSI_StatusTime",
        "KeyConditionExpression": "statusCode = :key AND createdAt BETWEEN :low AND :high",
        "ExpressionAttributeValues": _values(key=status, low=low, high=high),
        **_time_order(newest_first),
    }


def slowest(table: str, project: str, span: TimeRange) -> dict[str, Any]:
    low, high = span.bounds()
    return {
        "TableName": table,
        "IndexName": "GSI_ProjectLatency",
        "KeyConditionExpression": "projectId = :key",
        "FilterExpression": "createdAt BETWEEN :low AND :high",
        "ExpressionAttributeValues": _values(key=project, low=low, high=high),
        "ScanIndexForward": False,
    }


def by_project(
    table: str, project: str, span: TimeRange, newest_first: bool = True
) -> dict[str, Any]:
    low, high = span.bounds()
    return {
        "TableName": table,
        "KeyConditionExpression": "id = :key AND createdAt BETWEEN :low AND :high",
        "ExpressionAttributeValues": _values(key=f"project#{project}", low=low, high=high),
        **_time_order(newest_first),
    }


def by_request_id(
    table: str, request_id: str, project: str | None, span: TimeRange | None
) -> tuple[str, dict[str, Any]]:
    """("query"|"scan", arguments): a project narrows it to one partition."""
    values: dict[str, Any] = {"rid": request_id}
    keys = None
    if project is not None:
        values["key"] = f"project#{project}"
        keys = "id = :key"
    time_filter = None
    if span is not None:
        values["low"], values["high"] = span.bounds()
        time_filter = "createdAt BETWEEN :low AND :high"
    args: dict[str, Any] = {"TableName": table, "ExpressionAttributeValues": _values(**values)}
    if keys is not None:
        args["KeyConditionExpression"] = keys + (f" AND {time_filter}" if time_filter else "")
        args["FilterExpression"] = "requestId = :rid"
        return "query", args
    args["FilterExpression"] = "requestId = :rid" + (f" AND {time_filter}" if time_filter else "")
    return "scan", args


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class AuditReader:
    """Runs the questions against one table through an injected low-level client."""

    def __init__(self, client: Any, table: str, page_size: int = 100) -> None:
        self._client = client
        self._table = table
        self._page_size = page_size
        self._plain = TypeDeserializer().deserialize

    def _decode(self, item: Mapping[str, Any]) -> Item:
        return {name: self._plain(value) for name, value in item.items()}

    def pages(self, operation: str, args: Mapping[str, Any]) -> Iterator[Item]:
        """Every item of a Query/Scan, page after page (`Limit` = page size)."""
        call = self._client.query if operation == "query" else self._client.scan
        request = {**args, "Limit": self._page_size}
        while True:
            answer = call(**request)
            yield from (self._decode(item) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def query(self, args: Mapping[str, Any], limit: int | None) -> Iterator[Item]:
        return islice(self.pages("query", args), limit)

    def merged(
        self, queries: Sequence[Mapping[str, Any]], limit: int | None, newest_first: bool
    ) -> Iterator[Item]:
        """Several time-ordered queries as one time-ordered stream."""
        streams = [self.pages("query", args) for args in queries]
        merged = heapq.merge(
            *streams, key=lambda item: str(item.get("createdAt", "")), reverse=newest_first
        )
        return islice(merged, limit)

    def find_request(
        self, request_id: str, project: str | None, span: TimeRange | None
    ) -> Item | None:
        operation, args = by_request_id(self._table, request_id, project, span)
        return next(self.pages(operation, args), None)

    def with_previews(self, items: Iterable[Item]) -> Iterator[Item]:
        """The items with their previews, fetched from the table 100 keys at a time."""
        for chunk in _chunks(items, BATCH_GET_SIZE):
            previews = self._previews([(i["id"], i["createdAt"]) for i in chunk])
            for item in chunk:
                yield {**item, **previews.get((item["id"], item["createdAt"]), {})}

    def _previews(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        serialise = TypeSerializer().serialize
        request: dict[str, Any] = {
            self._table: {
                "Keys": [{"id": serialise(i), "createdAt": serialise(c)} for i, c in keys],
                "ProjectionExpression": "id, createdAt, " + ", ".join(PREVIEWS),
            }
        }
        found: dict[tuple[str, str], Item] = {}
        for attempt in range(8):
            answer = self._client.batch_get_item(RequestItems=request)
            for raw in answer.get("Responses", {}).get(self._table, []):
                item = self._decode(raw)
                found[(item["id"], item["createdAt"])] = {
                    k: v for k, v in item.items() if k in PREVIEWS
                }
            request = answer.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(1.0, 0.05 * 2**attempt))
        return found
