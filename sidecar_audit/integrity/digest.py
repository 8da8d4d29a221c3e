"""Digest objects: the tamper-evidence format shared by the sidecar and the verify command. Pure.

A digest is one JSON object in S3 at

    <prefix>-digest/YYYY/MM/DD/<writerId>/<YYYYMMDDTHHMMSSZ>-<digestSeq:010d>.json

(outside `<prefix>/`, so ingestion never sees it), written by the shipping
process, one chain per writer:

    {"digest": {
        "digestVersion": 1,
        "writerId": "<16 hex>",          the chain's writer (the shipping process)
        "digestSeq": n,                  0, 1, 2, ... per writer, gap-free
        "createdAt": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
        "bucket": "...", "prefix": "...",
        "previousDigestKey": "..." | null,     null only for digestSeq 0
        "previousDigestSha256": "<hex>" | null, SHA-256 of the previous digest object's bytes
        "seqNext": n,                    the writer's next record seq when the digest was built
        "objects": [{"key", "sha256", "bytes", "records",
                     "writerId",          the records' writer (a neighbour's, for adopted segments)
                     "seqRanges": [[first, last], ...], "unsequenced": n}],
        "tombstones": [{"writerId", "seqFirst", "seqLast", "reason"}]},
     "signature": {"algorithm", "keyId", "value"} | null}

The signature covers `canonical(digest)`: orjson with sorted keys, no floats
anywhere in the body, so the verifier re-serialises the parsed body to the
exact signed bytes. Algorithms: `ed25519` (a local key file) and
`ECDSA_SHA_256` (a KMS ECC_NIST_P256 key; KMS is given the SHA-256 of the
canonical bytes). The chain link is the SHA-256 of the whole previous object,
signature included.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

DIGEST_VERSION = 1
ED25519 = "ed25519"
ECDSA_SHA_256 = "ECDSA_SHA_256"
_SEQ_PREFIX = re.compile(rb'^\{"writerId":"([0-9a-f]{16})","seq":(\d{1,19})[,}]')
DIGEST_NAME = re.compile(r"^(?P<writer>[0-9a-f]{16})/(?P<time>\d{8}T\d{6}Z)-(?P<seq>\d{10})\.json$")


def digest_prefix(prefix: str) -> str:
    return f"{prefix.strip('/')}-digest"


def digest_key(prefix: str, writer_id: str, digest_seq: int, created: datetime) -> str:
    return (
        f"{digest_prefix(prefix)}/{created:%Y/%m/%d}/{writer_id}/"
        f"{created:%Y%m%dT%H%M%SZ}-{digest_seq:010d}.json"
    )


def iso_us(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- what a record carries ------------------------------------------------------------


def record_sequence(payload: bytes) -> tuple[str, int] | None:
    """(writerId, seq) of a spooled record, read from its first bytes; None for an old record.

    `AuditTrail.accept` puts both fields first, so no parse is needed; anything
    else falls back to a full parse.
    """
    match = _SEQ_PREFIX.match(payload)
    if match:
        return match[1].decode(), int(match[2])
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    writer, seq = record.get("writerId"), record.get("seq")
    if isinstance(writer, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return writer, seq
    return None


def seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted seqs as inclusive [first, last] runs: [1,2,3,7] -> [[1,3],[7,7]]."""
    ranges: list[list[int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1][1] = seq
        elif not ranges or seq > ranges[-1][1]:
            ranges.append([seq, seq])
    return ranges


@dataclass(frozen=True)
class ObjectEntry:
    """One shipped object as a digest lists it."""

    key: str
    sha256: str
    size: int
    records: int
    writer_id: str | None
    ranges: tuple[tuple[int, int], ...]
    unsequenced: int

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "bytes": self.size,
            "records": self.records,
            "writerId": self.writer_id,
            "seqRanges": [list(r) for r in self.ranges],
            "unsequenced": self.unsequenced,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObjectEntry:
        return cls(
            data["key"],
            data["sha256"],
            data["bytes"],
            data["records"],
            data.get("writerId"),
            tuple((int(a), int(b)) for a, b in data.get("seqRanges", [])),
            data.get("unsequenced", 0),
        )


def object_entry(key: str, body: bytes, payloads: Sequence[bytes]) -> ObjectEntry:
    """The digest entry of an object made of these record payloads."""
    writers: set[str] = set()
    seqs: list[int] = []
    for payload in payloads:
        found = record_sequence(payload)
        if found is not None:
            writers.add(found[0])
            seqs.append(found[1])
    writer = next(iter(writers)) if len(writers) == 1 else None
    ranges = tuple((a, b) for a, b in seq_ranges(seqs))
    return ObjectEntry(
        key, sha256_hex(body), len(body), len(payloads), writer, ranges, len(payloads) - len(seqs)
    )


@dataclass(frozen=True)
class Tombstone:
    """Seqs assigned to records the spool did not take (spool full / write error)."""

    writer_id: str
    first: int
    last: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "writerId": self.writer_id,
            "seqFirst": self.first,
            "seqLast": self.last,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tombstone:
        return cls(data["writerId"], int(data["seqFirst"]), int(data["seqLast"]), data["reason"])


def merge_tombstones(stones: Iterable[Tombstone]) -> list[Tombstone]:
    """Adjacent ranges of one writer and reason become one."""
    merged: list[Tombstone] = []
    for stone in sorted(stones, key=lambda t: (t.writer_id, t.first)):
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.writer_id == stone.writer_id
            and last.reason == stone.reason
            and stone.first <= last.last + 1
        ):
            merged[-1] = Tombstone(
                last.writer_id, last.first, max(last.last, stone.last), last.reason
            )
        else:
            merged.append(stone)
    return merged


# --- the digest -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChainHead:
    """The writer's last confirmed digest: what the next one links to."""

    digest_seq: int
    key: str
    sha256: str


def digest_body(
    *,
    writer_id: str,
    digest_seq: int,
    created: datetime,
    bucket: str,
    prefix: str,
    previous: ChainHead | None,
    seq_next: int,
    objects: Sequence[ObjectEntry],
    tombstones: Sequence[Tombstone],
) -> dict[str, Any]:
    return {
        "digestVersion": DIGEST_VERSION,
        "writerId": writer_id,
        "digestSeq": digest_seq,
        "createdAt": iso_us(created),
        "bucket": bucket,
        "prefix": prefix,
        "previousDigestKey": previous.key if previous else None,
        "previousDigestSha256": previous.sha256 if previous else None,
        "seqNext": seq_next,
        "objects": [o.as_json() for o in sorted(objects, key=lambda o: o.key)],
        "tombstones": [t.as_json() for t in merge_tombstones(tombstones)],
    }


def signature_json(algorithm: str, key_id: str, value: bytes) -> dict[str, str]:
    return {"algorithm": algorithm, "keyId": key_id, "value": base64.b64encode(value).decode()}


def envelope(body: dict[str, Any], signature: dict[str, str] | None) -> bytes:
    return orjson.dumps({"digest": body, "signature": signature}, option=orjson.OPT_SORT_KEYS)
