"""The checks behind `central-llm-audit-verify`, as pure functions over fetched bytes.

One job: given the digests and audit objects of a window (already fetched), say
what is wrong, one `Problem` per fact, each naming the S3 key (and request ids
where known). What is checked (sidecar_audit/integrity/digest.py is the format):

- chain: per writer, digests in digestSeq order, no number missing, each
  `previousDigestSha256` the SHA-256 of the previous digest's bytes, the key's
  writer and number matching the body; signatures valid when a public key is
  given (then an unsigned digest is a problem), and never an unsigned digest
  after a signed one in the same chain;
- objects: every listed object in the window exists, hashes to its listed
  SHA-256, and holds the listed record count and seq ranges; every object in
  the window is listed by some digest (objects younger than the grace period
  may not be digested yet: noted, not failed);
- seqs: per record writer, no seq missing between the lowest and highest seen
  in the window unless a digest's tombstone says it was dropped (counted),
  and no seq twice.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sidecar_audit.integrity.digest import (
    DIGEST_NAME,
    Tombstone,
    canonical,
    seq_ranges,
    sha256_hex,
)
from sidecar_audit.integrity.signing import PublicKey, check

# The batch id in an object key: `<created>-<writer id>-<segment sequence>`.
STEM = re.compile(r"(\d{8}T\d{12}Z)-([0-9a-f]{16})-(\d{10})")


@dataclass(frozen=True)
class Problem:
    kind: str  # modified, truncated, deleted, unlisted, chain, signature, gap, duplicate, item
    key: str
    detail: str
    request_ids: tuple[str, ...] = ()

    def line(self) -> str:
        ids = f" requestIds={','.join(self.request_ids[:10])}" if self.request_ids else ""
        return f"{self.kind}: {self.key}: {self.detail}{ids}"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "detail": self.detail,
            "requestIds": list(self.request_ids),
        }


@dataclass
class Digest:
    key: str
    data: bytes
    body: dict[str, Any]
    signature: dict[str, Any] | None


@dataclass
class RecordRef:
    key: str
    line: int
    record: dict[str, Any]


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[RecordRef] = field(default_factory=list)
    dropped: int = 0  # seqs tombstoned by the writers (spool-full drops), counted
    records_missing: int = 0
    items_missing: int = 0
    objects_tampered: int = 0
    digests: int = 0
    objects: int = 0

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)
        if problem.kind in ("modified", "truncated", "unlisted", "chain", "signature", "duplicate"):
            self.objects_tampered += 1


def stem_time(key: str) -> datetime | None:
    match = STEM.search(key.rsplit("/", 1)[-1])
    if not match:
        return None
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def parse_digest(key: str, data: bytes) -> Digest | Problem:
    try:
        outer = orjson.loads(data)
        body = outer["digest"]
        signature = outer.get("signature")
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            raise ValueError("no digest body")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return Problem("chain", key, f"digest unreadable: {exc}")
    return Digest(key, data, body, signature if isinstance(signature, dict) else None)


def decode_records(key: str, body: bytes) -> list[dict[str, Any]] | str:
    """The records of an audit object, or why they cannot be read."""
    try:
        if key.endswith(".ndjson.gz"):
            text = gzip.decompress(body)
            lines = text.split(b"\n")
            if lines[-1] != b"":
                return "the last line has no newline (truncated)"
            return [orjson.loads(line) for line in lines[:-1]]
        return [orjson.loads(body)]
    except (OSError, EOFError, zlib.error, orjson.JSONDecodeError) as exc:
        return f"not readable: {exc}"


def _ids(records: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(str(r.get("requestId")) for r in records if isinstance(r, dict))


# --- chains ---------------------------------------------------------------------------


def check_chain(
    writer: str,
    digests: list[Digest],
    previous_of_first: bytes | None,
    public_key: PublicKey | None,
    out: Findings,
) -> None:
    """`digests`: one writer's digests in the window, any order; `previous_of_first`: the
    bytes of the digest the first one links to (None if it could not be fetched)."""
    ordered = sorted(digests, key=lambda d: d.body.get("digestSeq", -1))
    signed_seen = False
    for index, digest in enumerate(ordered):
        body, key = digest.body, digest.key
        out.digests += 1
        name = DIGEST_NAME.search(key.split("-digest/", 1)[-1][11:])
        if (
            not name
            or name["writer"] != body.get("writerId")
            or int(name["seq"]) != body.get("digestSeq")
        ):
            out.add(Problem("chain", key, "digest key does not match its writer / number"))
        if index == 0:
            prev_key = body.get("previousDigestKey")
            if body.get("digestSeq") != 0 and prev_key:
                if previous_of_first is None:
                    out.add(Problem("chain", key, f"previous digest missing: {prev_key}"))
                elif sha256_hex(previous_of_first) != body.get("previousDigestSha256"):
                    out.add(Problem("chain", key, f"previous digest {prev_key} was changed"))
        else:
            before = ordered[index - 1]
            expected = before.body.get("digestSeq", -2) + 1
            if body.get("digestSeq") != expected:
                out.add(
                    Problem(
                        "chain",
                        key,
                        f"digests {expected}..{body.get('digestSeq', 0) - 1} of writer "
                        f"{writer} are missing (previous: {before.key})",
                    )
                )
            elif body.get("previousDigestKey") != before.key or body.get(
                "previousDigestSha256"
            ) != sha256_hex(before.data):
                out.add(Problem("chain", key, f"does not link to the previous digest {before.key}"))
        _check_signature(digest, public_key, signed_seen, out)
        signed_seen = signed_seen or digest.signature is not None


def _check_signature(
    digest: Digest, public_key: PublicKey | None, signed_seen: bool, out: Findings
) -> None:
    if digest.signature is None:
        if public_key is not None:
            out.add(Problem("signature", digest.key, "unsigned digest, but a key is configured"))
        elif signed_seen:
            out.add(Problem("signature", digest.key, "unsigned digest in a signed chain"))
        return
    if public_key is None:
        return
    why = check(digest.signature, canonical(digest.body), public_key)
    if why is not None:
        out.add(Problem("signature", digest.key, why))


# --- objects --------------------------------------------------------------------------


def check_object(key: str, listed: dict[str, Any], body: bytes | None, out: Findings) -> None:
    """One listed object against its digest entry; its records join `out.records`."""
    out.objects += 1
    if body is None:
        out.add(Problem("deleted", key, "listed in a digest, not in the bucket"))
        out.records_missing += int(listed.get("records", 0))
        return
    records = decode_records(key, body)
    if sha256_hex(body) != listed.get("sha256"):
        detail = "SHA-256 differs from the digest"
        if isinstance(records, list) and len(records) < int(listed.get("records", 0)):
            out.add(
                Problem(
                    "truncated",
                    key,
                    f"{detail}; {len(records)} of {listed.get('records')} records left",
                    _ids(records),
                )
            )
            out.records_missing += int(listed.get("records", 0)) - len(records)
        else:
            out.add(
                Problem("modified", key, detail, _ids(records) if isinstance(records, list) else ())
            )
    if isinstance(records, str):
        out.add(Problem("modified", key, records))
        return
    seqs = [r.get("seq") for r in records if isinstance(r, dict)]
    found = [[a, b] for a, b in seq_ranges(s for s in seqs if isinstance(s, int))]
    differs = len(records) != listed.get("records") or found != listed.get("seqRanges")
    if differs and sha256_hex(body) == listed.get("sha256"):  # only with a forged digest
        out.add(Problem("modified", key, "records / seqs differ from the digest"))
    add_records(key, records, out)


def add_records(key: str, records: list[dict[str, Any]], out: Findings) -> None:
    for line, record in enumerate(records, start=1):
        if isinstance(record, dict):
            out.records.append(RecordRef(key, line, record))


# --- seqs -----------------------------------------------------------------------------


def check_seqs(
    records: list[RecordRef],
    listed_missing: Iterable[tuple[str, int, int]],
    tombstones: Iterable[Tombstone],
    out: Findings,
) -> None:
    """No seq missing per writer between its lowest and highest in the window, none twice.

    `listed_missing`: (writer, first, last) ranges of listed objects that could not be
    read (already reported as deleted/modified: not reported again as a gap)."""
    seen: dict[str, dict[int, RecordRef]] = defaultdict(dict)
    for ref in records:
        writer, seq = ref.record.get("writerId"), ref.record.get("seq")
        if not isinstance(writer, str) or not isinstance(seq, int):
            out.add(
                Problem("gap", ref.key, f"line {ref.line} has no writerId/seq", _ids([ref.record]))
            )
            continue
        other = seen[writer].get(seq)
        if other is not None:
            out.add(
                Problem(
                    "duplicate",
                    ref.key,
                    f"seq {seq} of writer {writer} also in {other.key}",
                    _ids([ref.record, other.record]),
                )
            )
        seen[writer][seq] = ref
    covered: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for writer, first, last in listed_missing:
        covered[writer].append((first, last))
    dropped: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for stone in set(tombstones):
        dropped[stone.writer_id].append((stone.first, stone.last))
        out.dropped += stone.last - stone.first + 1
    for writer, by_seq in seen.items():
        low, high = min(by_seq), max(by_seq)
        ranges = [(s, s) for s in by_seq] + covered[writer] + dropped[writer]
        for first, last in _holes(ranges, low, high):
            before, after = by_seq.get(first - 1), by_seq.get(last + 1)
            where = before.key if before else after.key if after else writer
            out.add(
                Problem(
                    "gap",
                    where,
                    f"writer {writer}: seqs {first}..{last} missing (after "
                    f"{before.key if before else '?'}, before {after.key if after else '?'})",
                )
            )
            out.records_missing += last - first + 1


def _holes(ranges: list[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    holes = []
    cursor = low
    for first, last in sorted(ranges):
        if last < cursor:
            continue
        if first > cursor:
            holes.append((cursor, min(first - 1, high)))
        cursor = max(cursor, last + 1)
        if cursor > high:
            break
    if cursor <= high:
        holes.append((cursor, high))
    return [h for h in holes if h[0] <= h[1]]
