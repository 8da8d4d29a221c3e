"""`central-llm-audit-query`: answer the audit questions from DynamoDB (and S3 for one request).

    central-llm-audit-query user alice --since 7d
    central-llm-audit-query status 500 502 503 504 --since 2026-11-26
    central-llm-audit-query slowest billing-app --since 24h --limit 10
    central-llm-audit-query project billing-app --since 1h --format jsonl
    central-llm-audit-query request <requestId> [--project billing-app]

Also `python -m central_llm_ops.audit_query` and `scripts/audit-query`. Times
are UTC; the range is [--since, --until), default the last 24 hours (no range
for `request`). Lists are newest first (`--oldest-first` turns them), `slowest`
is by latency. Output: an aligned table, or JSON lines with `--format jsonl`
(one item per line; for `request` one `{"item", "record"}` object). Results
are read page by page (`--page-size`) and stop at `--limit` (0: no limit).

`request` without `--project` scans the whole table (there is no index on
the request id); give the project, and a time range, whenever you know them.
Exit status: 0, or 1 when the request is not found. The table comes from
`--table` / `TABLE_NAME`; the endpoint from the standard SDK variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from central_llm_ops import query_plans as q
from central_llm_ops.audit_format import detail, json_line, plain, table, write_lines
from central_llm_ops.audit_timerange import TimeRange
from llm_audit.objects import UnreadableObject, record_at

DEFAULT_LIMITS = {"user": 100, "status": 100, "slowest": 20, "project": 100}


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--table", default=os.environ.get("TABLE_NAME", "CentralLLMAudit"))
    common.add_argument("--region", default=os.environ.get("AWS_REGION") or None)
    common.add_argument("--format", choices=("table", "jsonl"), default="table")
    common.add_argument("--page-size", type=int, default=100, help="items per DynamoDB page")
    return common


def _ranged(sub: argparse.ArgumentParser, since: str | None = "24h") -> None:
    sub.add_argument("--since", default=since, help="ISO-8601 time or a duration ago (24h, 7d)")
    sub.add_argument("--until", default="now" if since else None, help="ISO-8601 time or 'now'")


def _listing(sub: argparse.ArgumentParser, name: str, ordered: bool = True) -> None:
    _ranged(sub)
    sub.add_argument("--limit", type=int, default=DEFAULT_LIMITS[name], help="0 for no limit")
    sub.add_argument("--previews", action="store_true", help="add prompt/response previews")
    if ordered:
        sub.add_argument("--oldest-first", action="store_true")


def parser() -> argparse.ArgumentParser:
    common = _common()
    root = argparse.ArgumentParser(
        prog="central-llm-audit-query",
        description="Query the Central LLM audit table.",
        epilog="Times are UTC. The endpoint comes from AWS_ENDPOINT_URL and friends.",
    )
    subs = root.add_subparsers(dest="question", required=True)
    user = subs.add_parser("user", parents=[common], help="a user's requests (GSI_UserTime)")
    user.add_argument("user_id")
    _listing(user, "user")
    status = subs.add_parser(
        "status", parents=[common], help="requests with these status codes (GSI_StatusTime)"
    )
    status.add_argument("codes", type=int, nargs="+")
    _listing(status, "status")
    slow = subs.add_parser(
        "slowest", parents=[common], help="a project's slowest requests (GSI_ProjectLatency)"
    )
    slow.add_argument("project_id")
    _listing(slow, "slowest", ordered=False)
    project = subs.add_parser("project", parents=[common], help="a project's requests by time")
    project.add_argument("project_id")
    _listing(project, "project")
    one = subs.add_parser(
        "request", parents=[common], help="one request by id, with its full record from S3"
    )
    one.add_argument("request_id")
    one.add_argument("--project", help="the request's project (avoids a table scan)")
    _ranged(one, since=None)
    return root


def _span(args: argparse.Namespace) -> TimeRange | None:
    if args.since is None and args.until is None:
        return None
    return TimeRange.parse(args.since or "1970-01-01", args.until or "now")


def _listing_items(reader: q.AuditReader, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    span = _span(args) or TimeRange.parse("24h", "now")
    limit = args.limit or None
    newest = not getattr(args, "oldest_first", False)
    if args.question == "user":
        items = reader.query(q.by_user(args.table, args.user_id, span, newest), limit)
    elif args.question == "status":
        queries = [q.by_status(args.table, code, span, newest) for code in args.codes]
        items = reader.merged(queries, limit, newest)
    elif args.question == "slowest":
        items = reader.query(q.slowest(args.table, args.project_id, span), limit)
    else:
        items = reader.query(q.by_project(args.table, args.project_id, span, newest), limit)
    return reader.with_previews(items) if args.previews else items


def fetch_record(s3: Any, item: dict[str, Any]) -> dict[str, Any] | None:
    """The request's full audit record from its S3 object, or None when it cannot be had."""
    try:
        answer = s3.get_object(Bucket=item["auditBucket"], Key=item["auditObjectKey"])
        return record_at(item["auditObjectKey"], answer["Body"].read(), int(item["auditLine"]))
    except (KeyError, ClientError, BotoCoreError, UnreadableObject):
        return None


def _request(session: Any, reader: q.AuditReader, args: argparse.Namespace, out: TextIO) -> int:
    item = reader.find_request(args.request_id, args.project, _span(args))
    if item is None:
        sys.stderr.write(f"request {args.request_id} not found in {args.table}\n")
        return 1
    record = fetch_record(session.client("s3"), item)
    if args.format == "jsonl":
        write_lines([json_line({"item": item, "record": record})], out)
    else:
        write_lines(detail(plain(item), record), out)
    return 0


def answer(args: argparse.Namespace, out: TextIO) -> int:
    session = boto3.session.Session(region_name=args.region)
    reader = q.AuditReader(session.client("dynamodb"), args.table, page_size=args.page_size)
    if args.question == "request":
        return _request(session, reader, args, out)
    items = _listing_items(reader, args)
    if args.format == "jsonl":
        write_lines((json_line(item) for item in items), out)
    else:
        write_lines(table(items, previews=args.previews), out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    try:
        _span(args)
    except ValueError as exc:
        cli.error(str(exc))
    try:
        return answer(args, out or sys.stdout)
    except BrokenPipeError:  # the reader (`head`, a pager) went away: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
