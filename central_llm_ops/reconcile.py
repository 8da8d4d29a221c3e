"""`python -m central_llm_ops.reconcile`: the scheduled audit reconciliation and its three metrics.

Runs `central-llm-audit-verify --table` over one window and turns its verdict
into CloudWatch metrics. The stack runs it as an ECS task every 15 minutes
(ecs/stackgen/integrity.py); it runs the same against the no-Docker stack or
compose with `AWS_ENDPOINT_URL` set.

Window: the `--window` seconds (3600) that ended `--settle` seconds (900)
ago. The settle time lets the trail catch up before it is judged: a writer
puts a digest every AUDIT_DIGEST_INTERVAL_S (300 s) and the ingestion may lag
up to the backlog alarm's 15 minutes, so an object or item still on its way is
not reported missing. Verify's grace is the same settle time: a digest put up
to `settle` after the window counts, and no object in the window is young
enough to be excused from being listed.

Output, on stdout, one JSON object a line (the task's log group):
- `{"event": "audit_reconcile", ...}`: the window, verify's exit code, its
  stats and up to `--max-problems` problems (S3 keys and request ids, never
  record contents);
- one CloudWatch Embedded Metric Format line, namespace `CentralLLM/Audit`,
  dimension `AuditBucket`: `AuditRecordsMissing`, `AuditObjectsTampered`,
  `AuditItemsMissing` (verify's `recordsMissing`, `objectsTampered`,
  `itemsMissing`). EMF rather than PutMetricData: CloudWatch Logs extracts the
  metrics from the log line, so the task role needs no CloudWatch permission.

Settings: `--bucket` / AUDIT_BUCKET, `--prefix` / AUDIT_PREFIX (logs),
`--table` / TABLE_NAME, the signing key as verify takes it (AUDIT_DIGEST_KMS_KEY_ID
or `--public-key`); AWS settings from the standard `AWS_*` variables.

Exit: verify's. 0 intact, 1 problems (metrics published either way), 2 usage
or AWS error: nothing was measured, so only `AuditReconcileFailed` = 1 is
published (its alarm says the check itself is broken; the log line says why).
Every measured run publishes `AuditReconcileFailed` = 0, which clears it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

from central_llm_ops import audit_verify

NAMESPACE = "CentralLLM/Audit"
# Metric name -> the key of verify's `--json` stats it carries.
METRICS = {
    "AuditRecordsMissing": "recordsMissing",
    "AuditObjectsTampered": "objectsTampered",
    "AuditItemsMissing": "itemsMissing",
}
FAILED_METRIC = "AuditReconcileFailed"
DEFAULT_SETTLE_S = 900
DEFAULT_WINDOW_S = 3600


def window(now: datetime, settle_s: float, length_s: float) -> tuple[datetime, datetime]:
    """[since, until): the `length_s` seconds that ended `settle_s` seconds before `now`."""
    until = now.astimezone(UTC) - timedelta(seconds=settle_s)
    return until - timedelta(seconds=length_s), until


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def verify_argv(args: argparse.Namespace, since: datetime, until: datetime) -> list[str]:
    argv = ["--bucket", args.bucket, "--prefix", args.prefix, "--json"]
    argv += ["--since", iso(since), "--until", iso(until), "--grace", str(args.settle)]
    if args.table:
        argv += ["--table", args.table]
    if args.public_key:
        argv += ["--public-key", args.public_key]
    return argv


def emf_line(bucket: str, stats: dict[str, Any] | None, timestamp_ms: int) -> dict[str, Any]:
    """One EMF object, dimension AuditBucket: the three counts of a reconciliation and
    `AuditReconcileFailed` 0 — or, when nothing could be measured (`stats` None), only
    `AuditReconcileFailed` 1."""
    values = (
        {FAILED_METRIC: 1}
        if stats is None
        else {
            **{name: int(stats.get(key) or 0) for name, key in METRICS.items()},
            FAILED_METRIC: 0,
        }
    )
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["AuditBucket"]],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in values],
                }
            ],
        },
        "AuditBucket": bucket,
        **values,
    }


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m central_llm_ops.reconcile",
        description="Verify the audit trail of the last settled hour and publish its metrics.",
    )
    cli.add_argument("--bucket", default=os.environ.get("AUDIT_BUCKET"), help="audit bucket")
    cli.add_argument("--prefix", default=os.environ.get("AUDIT_PREFIX", "logs"))
    cli.add_argument(
        "--table", default=os.environ.get("TABLE_NAME") or None, help="audit table (items)"
    )
    cli.add_argument("--public-key", help="PEM public key of the digests (else the KMS key)")
    cli.add_argument("--settle", type=float, default=DEFAULT_SETTLE_S, help="seconds")
    cli.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help="seconds")
    cli.add_argument("--max-problems", type=int, default=50, help="problems logged per run")
    return cli


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    stream = out or sys.stdout
    if not args.bucket:
        print("reconcile: --bucket (or AUDIT_BUCKET) is required", file=sys.stderr)
        return audit_verify.EXIT_USAGE
    now = datetime.now(UTC)
    since, until = window(now, args.settle, args.window)
    report = io.StringIO()
    code = audit_verify.main(verify_argv(args, since, until), out=report)
    line: dict[str, Any] = {
        "event": "audit_reconcile",
        "since": iso(since),
        "until": iso(until),
        "exitCode": code,
    }
    if code == audit_verify.EXIT_USAGE:
        stream.write(orjson.dumps(line).decode() + "\n")
        failed = emf_line(args.bucket, None, int(time.time() * 1000))
        stream.write(orjson.dumps(failed).decode() + "\n")
        stream.flush()
        return code
    verdict = orjson.loads(report.getvalue())
    problems = verdict.get("problems", [])
    line.update(
        ok=verdict.get("ok"),
        stats=verdict.get("stats", {}),
        problems=problems[: args.max_problems],
        problemsLeftOut=max(0, len(problems) - args.max_problems),
    )
    stream.write(orjson.dumps(line).decode() + "\n")
    emf = emf_line(args.bucket, verdict.get("stats", {}), int(time.time() * 1000))
    stream.write(orjson.dumps(emf).decode() + "\n")
    stream.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
