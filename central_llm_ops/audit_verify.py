"""`central-llm-audit-verify`: prove the audit trail of a time window is whole and untouched.

    central-llm-audit-verify --bucket central-llm-audit --prefix logs --since 1h
    central-llm-audit-verify --bucket B --since 2026-11-28T09:00 --until 2026-11-28T10:00 \\
        --table CentralLLMAudit --public-key digest-pub.pem --json

Walks every writer's digest chain (`<prefix>-digest/`) over the window and
checks what `audit_integrity.py` lists: objects exist and hash right, counts
and seq ranges match, the chain is unbroken and signed, no seq is missing
except dropped-and-tombstoned ones, nothing in the window is unlisted; with
`--table`, every record has its DynamoDB item (wire contract 3).

Window: objects whose batch id (their segment's creation time) is in
[--since, --until); digests up to `--grace` seconds after --until are read,
since a digest lists objects shipped before it. Objects younger than `--grace`
(before now) that no digest lists yet are noted, not failed.

Signatures are checked with `--public-key FILE` (PEM, Ed25519 or EC) or
`--kms-key-id` (KMS GetPublicKey; default `AUDIT_DIGEST_KMS_KEY_ID`); with a
key, an unsigned digest is a problem. AWS settings come from the standard
`AWS_*` variables.

Exit 0: everything holds. 1: one line per problem on stdout (kind, S3 key,
detail, request ids where known). 2: usage or configuration error (including
AWS errors other than a missing object).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import boto3
import orjson
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from central_llm_ops.audit_integrity import (
    Digest,
    Findings,
    Problem,
    add_records,
    check_chain,
    check_object,
    check_seqs,
    decode_records,
    parse_digest,
    stem_time,
)
from central_llm_ops.audit_timerange import TimeRange
from llm_audit.items import (
    UNKNOWN,
    InvalidRecord,
    canonical_timestamp,
    item_keys,
    normalise_label,
    parse_timestamp,
    request_id_of,
)
from sidecar_audit.integrity.digest import DIGEST_NAME, Tombstone, digest_prefix
from sidecar_audit.integrity.signing import PublicKey, load_public_key

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    grace: timedelta
    now: datetime


def days(start: datetime, end: datetime) -> Iterator[str]:
    day = start.date()
    while day <= end.date():
        yield f"{day:%Y/%m/%d}"
        day += timedelta(days=1)


class Bucket:
    """The S3 side: listing by day, fetching in parallel; NoSuchKey is None, not an error."""

    def __init__(self, name: str, workers: int) -> None:
        config = BotoConfig(max_pool_connections=max(10, workers), retries={"mode": "standard"})
        self.name = name
        self.s3 = boto3.client("s3", config=config)
        self.pool = ThreadPoolExecutor(workers)

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            out.extend(item["Key"] for item in page.get("Contents", []))
        return out

    def get(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        return dict(zip(keys, self.pool.map(self.get, keys), strict=True))


def verify(
    bucket: Bucket,
    prefix: str,
    window: Window,
    public_key: PublicKey | None,
    table: str | None,
) -> Findings:
    out = Findings()
    digests = _digests(bucket, prefix, window, out)
    by_writer: dict[str, list[Digest]] = defaultdict(list)
    for digest in digests:
        by_writer[str(digest.body.get("writerId"))].append(digest)
    firsts = {}
    for writer, chain in by_writer.items():
        first = min(chain, key=lambda d: d.body.get("digestSeq", -1))
        firsts[writer] = first.body.get("previousDigestKey")
    previous = bucket.get_many([k for k in firsts.values() if k])
    for writer, chain in by_writer.items():
        prev_key = firsts[writer]
        check_chain(writer, chain, previous.get(prev_key) if prev_key else None, public_key, out)
        if public_key is None and all(d.signature is None for d in chain):
            out.notes.append(f"writer {writer}: digest chain is unsigned")
        elif public_key is None:
            out.notes.append(f"writer {writer}: signatures not checked (no public key given)")

    in_window = _objects_in_window(bucket, prefix, window)
    listed: dict[str, dict[str, Any]] = {}
    tombstones: list[Tombstone] = []
    for digest in digests:
        for entry in digest.body.get("objects", []):
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                listed[entry["key"]] = entry
        for stone in digest.body.get("tombstones", []):
            tombstones.append(Tombstone.from_json(stone))
    wanted = sorted(
        {k for k in listed if _in(stem_time(k), window.since, window.until)} | set(in_window)
    )
    bodies = bucket.get_many(wanted)
    listed_missing: list[tuple[str, int, int]] = []
    for key in wanted:
        body = bodies[key]
        if key in listed:
            before = len(out.problems)
            check_object(key, listed[key], body, out)
            if len(out.problems) > before:
                entry = listed[key]
                for first, last in entry.get("seqRanges", []):
                    listed_missing.append((str(entry.get("writerId")), first, last))
            continue
        if body is None:
            continue  # listed by S3 a moment ago, gone now: nothing to say about it
        records = decode_records(key, body)
        moment = stem_time(key)
        if moment is not None and moment > window.now - window.grace:
            out.notes.append(f"{key}: not in a digest yet (younger than the grace period)")
        else:
            ids = (
                tuple(str(r.get("requestId")) for r in records) if isinstance(records, list) else ()
            )
            out.add(Problem("unlisted", key, "in the bucket, but no digest lists it", ids))
        if isinstance(records, list):
            add_records(key, records, out)
    check_seqs(out.records, listed_missing, tombstones, out)
    if table:
        _check_items(table, out)
    return out


def _in(moment: datetime | None, since: datetime, until: datetime) -> bool:
    return moment is not None and since <= moment < until


def _digests(bucket: Bucket, prefix: str, window: Window, out: Findings) -> list[Digest]:
    root = digest_prefix(prefix)
    last = window.until + window.grace
    keys: list[str] = []
    for day in days(window.since, last):
        for key in bucket.keys(f"{root}/{day}/"):
            name = DIGEST_NAME.search(key[len(root) + 12 :])
            if name is None:
                out.add(Problem("chain", key, "not a digest name"))
                continue
            moment = datetime.strptime(name["time"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            if window.since <= moment <= last:
                keys.append(key)
    digests = []
    for key, data in bucket.get_many(keys).items():
        if data is None:
            continue
        parsed = parse_digest(key, data)
        if isinstance(parsed, Problem):
            out.add(parsed)
        else:
            digests.append(parsed)
    return digests


def _objects_in_window(bucket: Bucket, prefix: str, window: Window) -> list[str]:
    keys = []
    for day in days(window.since - timedelta(days=1), window.until):
        for key in bucket.keys(f"{prefix.strip('/')}/{day}/"):
            if _in(stem_time(key), window.since, window.until):
                keys.append(key)
    return keys


def item_key(record: dict[str, Any]) -> dict[str, str]:
    """The DynamoDB key the ingestion gives this record (llm_audit.items, wire contract 3)."""
    source = normalise_label(record.get("source"))
    project = normalise_label(record.get("projectId", source))
    if project == UNKNOWN:
        project = source
    moment = canonical_timestamp(parse_timestamp(record.get("timestamp")))
    return item_keys(project, moment, request_id_of(record))


def _check_items(table: str, out: Findings) -> None:
    dynamodb = boto3.client("dynamodb")
    wanted: dict[tuple[str, str], Any] = {}
    for ref in out.records:
        try:
            key = item_key(ref.record)
        except InvalidRecord as exc:
            out.add(Problem("item", ref.key, f"line {ref.line}: no item key: {exc}"))
            continue
        wanted[(key["id"], key["createdAt"])] = ref
    keys = list(wanted)
    found: set[tuple[str, str]] = set()
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {
            table: {
                "Keys": [
                    {"id": {"S": a}, "createdAt": {"S": b}} for a, b in keys[start : start + 100]
                ],
                "ProjectionExpression": "id, createdAt",
            }
        }
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for item in answer.get("Responses", {}).get(table, []):
                found.add((item["id"]["S"], item["createdAt"]["S"]))
            request = answer.get("UnprocessedKeys") or {}
    for wanted_key in keys:
        if wanted_key not in found:
            ref = wanted[wanted_key]
            out.add(
                Problem(
                    "item",
                    ref.key,
                    f"line {ref.line}: no DynamoDB item {wanted_key[0]} / {wanted_key[1]}",
                    (str(ref.record.get("requestId")),),
                )
            )
    out.items_missing = sum(1 for p in out.problems if p.kind == "item")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="central-llm-audit-verify",
        description="Verify the audit trail (digest chains, objects, seqs, items) of a window.",
    )
    cli.add_argument("--bucket", default=os.environ.get("AUDIT_BUCKET"), help="audit bucket")
    cli.add_argument("--prefix", default=os.environ.get("AUDIT_PREFIX", "logs"))
    cli.add_argument("--since", required=True, help="ISO-8601, 'now' or e.g. 1h, 7d")
    cli.add_argument("--until", default="now")
    cli.add_argument("--table", help="also check every record's DynamoDB item in this table")
    cli.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    cli.add_argument("--public-key", type=Path, help="PEM public key the digests are signed with")
    cli.add_argument(
        "--kms-key-id",
        default=os.environ.get("AUDIT_DIGEST_KMS_KEY_ID") or None,
        help="KMS key whose public key checks the signatures",
    )
    cli.add_argument("--grace", type=float, default=900.0, help="seconds a digest may lag")
    cli.add_argument("--workers", type=int, default=16, help="parallel S3 reads")
    return cli


def _public_key(args: argparse.Namespace) -> PublicKey | None:
    if args.public_key and args.kms_key_id:
        raise UsageError("give --public-key or --kms-key-id, not both")
    try:
        if args.public_key:
            return load_public_key(args.public_key.read_bytes())
        if args.kms_key_id:
            der = boto3.client("kms").get_public_key(KeyId=args.kms_key_id)["PublicKey"]
            return load_public_key(der)
    except (OSError, ValueError) as exc:
        raise UsageError(f"public key: {exc}") from exc
    return None


def report(findings: Findings, seconds: float, as_json: bool, out: TextIO) -> None:
    stats = {
        "digests": findings.digests,
        "objects": findings.objects,
        "records": len(findings.records),
        "recordsDropped": findings.dropped,
        "recordsMissing": findings.records_missing,
        "objectsTampered": findings.objects_tampered,
        "itemsMissing": findings.items_missing,
        "seconds": round(seconds, 3),
        "recordsPerSecond": round(len(findings.records) / seconds, 1) if seconds > 0 else None,
    }
    if as_json:
        body = {
            "ok": not findings.problems,
            "problems": [p.as_json() for p in findings.problems],
            "notes": findings.notes,
            "stats": stats,
        }
        out.write(orjson.dumps(body).decode() + "\n")
        return
    for problem in findings.problems:
        out.write(problem.line() + "\n")
    for note in findings.notes:
        print(f"note: {note}", file=sys.stderr)
    verdict = "intact" if not findings.problems else f"{len(findings.problems)} problem(s)"
    print(
        f"{verdict}: {stats['digests']} digests, {stats['objects']} objects, "
        f"{stats['records']} records ({stats['recordsDropped']} dropped and counted) "
        f"in {stats['seconds']} s",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    try:
        if not args.bucket:
            raise UsageError("--bucket (or AUDIT_BUCKET) is required")
        try:
            span = TimeRange.parse(args.since, args.until)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        window = Window(span.since, span.until, timedelta(seconds=args.grace), datetime.now(UTC))
        public_key = _public_key(args)
        started = time.perf_counter()
        findings = verify(
            Bucket(args.bucket, args.workers), args.prefix, window, public_key, args.table
        )
    except UsageError as exc:
        print(f"central-llm-audit-verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BotoCoreError, ClientError) as exc:
        print(f"central-llm-audit-verify: AWS error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report(findings, time.perf_counter() - started, args.json, out or sys.stdout)
    return EXIT_PROBLEMS if findings.problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
