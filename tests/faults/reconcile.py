"""Reconciling what clients were answered with what S3 holds: the closing check of every fault test.

The rule (issue 3): every request a client got an answer for has exactly one
record in S3. Records are counted by distinct `requestId`; a request id may
appear more than once only as byte-identical lines (a batch object uploaded
again after a lost confirmation); two different records for one request fail.
Records for requests nobody was answered for are "invented" and fail too,
unless the test names them in `may_exist` (e.g. requests in flight when the
sidecar was killed, whose outcome the client never learnt).

`report` prints one `FAULT-RESULT` line per test, shown by `pytest -s`.
"""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from tests.audit_s3 import read_audit


@dataclass(frozen=True)
class Reconciliation:
    answered: int  # requests the clients got an answer for
    distinct_found: int  # distinct request ids of those found in S3
    record_lines: int  # every record line in S3, duplicates included
    duplicate_lines: int  # byte-identical repeats (re-uploads)
    objects: int
    missing: frozenset[str]  # answered, but no record
    invented: frozenset[str]  # a record nobody asked for

    def summary(self) -> str:
        return (
            f"answered={self.answered} distinct_in_s3={self.distinct_found} "
            f"record_lines={self.record_lines} duplicate_lines={self.duplicate_lines} "
            f"objects={self.objects} missing={len(self.missing)} invented={len(self.invented)}"
        )


def record_lines(raw: dict[str, bytes]) -> list[bytes]:
    """Every record line of every audit object (batch `.ndjson.gz` or per-request `.json`)."""
    lines: list[bytes] = []
    for key, body in raw.items():
        if key.endswith(".ndjson.gz"):
            text = gzip.decompress(body)
            assert text.endswith(b"\n"), f"{key}: a batch ends with a newline"
            lines.extend(text.split(b"\n")[:-1])
        else:
            lines.append(body)
    return lines


def reconcile(
    raw: dict[str, bytes], answered: Iterable[str], may_exist: Iterable[str] = ()
) -> Reconciliation:
    by_id: dict[str, list[bytes]] = defaultdict(list)
    lines = record_lines(raw)
    for line in lines:
        by_id[orjson.loads(line)["requestId"]].append(line)
    for request_id, copies in by_id.items():
        assert len(set(copies)) == 1, f"{request_id} has {len(set(copies))} different records"
    wanted = set(answered)
    found = set(by_id)
    return Reconciliation(
        answered=len(wanted),
        distinct_found=len(found & wanted),
        record_lines=len(lines),
        duplicate_lines=len(lines) - len(found),
        objects=len(raw),
        missing=frozenset(wanted - found),
        invented=frozenset(found - wanted - set(may_exist)),
    )


def wait_reconciled(
    moto_url: str,
    bucket: str,
    answered: Iterable[str],
    may_exist: Iterable[str] = (),
    timeout: float = 60.0,
) -> Reconciliation:
    """Poll S3 until no answered request is missing (or the timeout), then reconcile."""
    wanted, extra = set(answered), set(may_exist)
    deadline = time.monotonic() + timeout
    while True:
        result = reconcile(read_audit(moto_url, bucket).raw, wanted, extra)
        if not result.missing or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def report(name: str, result: Reconciliation, **extra: object) -> None:
    details = "".join(f" {key}={value}" for key, value in extra.items())
    print(f"\nFAULT-RESULT {name}: {result.summary()}{details}")


def assert_exactly_once(result: Reconciliation) -> None:
    assert not result.missing, f"answered but never recorded: {sorted(result.missing)[:10]}"
    assert not result.invented, f"records nobody was answered for: {sorted(result.invented)[:10]}"
    assert result.distinct_found == result.answered
