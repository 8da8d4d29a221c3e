"""The audit query command on a table seeded through the handler: one test per question."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from central_llm_ops import audit_query
from central_llm_ops.ingest_sqs import LocalContext
from llm_audit.ingest import handler
from tests.conftest import AWS_TEST_ENV
from tests.ingest.conftest import Stack
from tests.ingest.support import load_event, put_batch, record

ROOT = Path(__file__).resolve().parents[2]
KEY = "logs/2026/11/20/0192f3a4-seed.ndjson.gz"
RANGE = ["--since", "2026-11-20", "--until", "2026-11-21T00:00:00Z"]

# (requestId, minute of 2026-11-20T10:MM, user, project, status, latencyMs)
SEED: list[tuple[str, int, str, str, int, float]] = [
    ("a1", 1, "alice", "billing-app", 200, 120.5),
    ("b1", 2, "bob", "search", 200, 40.0),
    ("a2", 3, "alice", "search", 500, 3000.25),
    ("b2", 4, "bob", "billing-app", 503, 15.0),
    ("a3", 5, "alice", "billing-app", 200, 950.0),
    ("s1", 6, "carol", "search", 200, 70.0),
    ("s2", 7, "carol", "search", 500, 640.0),
    ("s3", 8, "carol", "search", 200, 5.5),
    ("p1", 9, "dave", "billing-app", 200, 2200.0),
]
OUTSIDE = ("old", "2026-11-19T23:59:59.999999Z", "alice", "billing-app", 500, 99999.0)


def seed_record(rid: str, ts: str, user: str, project: str, status: int, latency: float) -> Any:
    return record(
        requestId=rid,
        timestamp=ts,
        userId=user,
        projectId=project,
        statusCode=status,
        latencyMs=latency,
        request={"body": {"messages": [{"role": "user", "content": f"question {rid}"}]}},
    )


@pytest.fixture
def seeded(stack: Stack) -> Stack:
    records = [
        seed_record(rid, f"2026-11-20T10:{minute:02d}:00.000000Z", user, project, status, ms)
        for rid, minute, user, project, status, ms in SEED
    ]
    records.append(seed_record(*OUTSIDE))
    put_batch(stack.s3, stack.bucket, KEY, records)
    handler(load_event("s3_put.json", bucket=stack.bucket, key=KEY), LocalContext(60))
    return stack


def ask(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = audit_query.main(list(argv), out=out)
    return code, out.getvalue()


def ids(output: str) -> list[str]:
    return [json.loads(line)["requestId"] for line in output.splitlines()]


def test_a_users_requests_newest_first_across_pages(seeded: Stack) -> None:
    code, out = ask("user", "alice", *RANGE, "--format", "jsonl", "--page-size", "2")
    assert code == 0
    assert ids(out) == ["a3", "a2", "a1"]  # "old" is outside the range


def test_requests_by_status_merged_in_time_order(seeded: Stack) -> None:
    code, out = ask("status", "500", "503", *RANGE, "--format", "jsonl", "--oldest-first")
    assert code == 0
    assert ids(out) == ["a2", "b2", "s2"]
    assert {json.loads(line)["statusCode"] for line in out.splitlines()} == {500, 503}


def test_a_projects_slowest_requests(seeded: Stack) -> None:
    code, out = ask("slowest", "billing-app", *RANGE, "--limit", "3", "--format", "jsonl")
    assert code == 0
    assert ids(out) == ["p1", "a3", "a1"]  # 2200, 950, 120.5; "old" (99999) is out of range
    assert [json.loads(line)["latencyMs"] for line in out.splitlines()] == [2200, 950, 120.5]


def test_a_projects_requests_by_time_across_pages(seeded: Stack) -> None:
    code, out = ask("project", "search", *RANGE, "--format", "jsonl", "--page-size", "2")
    assert code == 0
    assert ids(out) == ["s3", "s2", "s1", "a2", "b1"]


def test_one_request_with_its_full_record_from_s3(seeded: Stack) -> None:
    code, out = ask("request", "s2", "--format", "jsonl")
    assert code == 0
    answer = json.loads(out)
    assert answer["item"]["auditObjectKey"] == KEY and answer["item"]["auditLine"] == 6
    expected = seed_record("s2", "2026-11-20T10:07:00.000000Z", "carol", "search", 500, 640.0)
    assert answer["record"] == expected


def test_one_request_within_a_project_and_range(seeded: Stack) -> None:
    code, out = ask("request", "a2", "--project", "search", *RANGE)
    assert code == 0
    assert "requestId" in out and "a2" in out
    assert '"content": "question a2"' in out  # the record, pretty-printed
    assert ask("request", "a2", "--project", "billing-app")[0] == 1  # wrong project: not found


def test_unknown_request_is_exit_status_1(seeded: Stack) -> None:
    assert ask("request", "no-such-request")[0] == 1


def test_table_output_with_previews(seeded: Stack) -> None:
    code, out = ask("user", "bob", *RANGE, "--previews")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["time", "requestId", "project"]
    assert header.split()[-2:] == ["prompt", "response"]
    assert [row.split()[1] for row in rows] == ["b2", "b1"]
    assert "question b2" in rows[0]  # the preview, fetched from the table (not in the GSI)


def test_empty_answer_says_so(seeded: Stack) -> None:
    assert ask("user", "nobody", *RANGE) == (0, "(no requests)\n")


def test_bad_time_is_a_usage_error(seeded: Stack) -> None:
    with pytest.raises(SystemExit) as exited:
        ask("user", "alice", "--since", "last tuesday")
    assert exited.value.code == 2


def test_wrapper_script_runs_the_same_command(seeded: Stack) -> None:
    env = {**os.environ, **AWS_TEST_ENV, **seeded.env(), "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts" / "audit-query"), "user", "alice", *RANGE, "--format", "jsonl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ids(done.stdout) == ["a3", "a2", "a1"]
