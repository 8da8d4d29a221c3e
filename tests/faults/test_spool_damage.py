"""Damaged spool segments at start-up: intact records shipped, bad bytes quarantined, serving on.

The spool directory is crafted before the sidecar starts, as a crash or a bad
disk would leave it, with one segment per damage so that a single process
start covers every case (the unit tests in tests/sidecar/test_spool/recovery.py
do the same per file; here it is the real process, its shipper and S3):

- torn tail: a dead writer's `.open` segment of three records, cut at every
  byte offset inside its last record (one segment per offset);
- flipped byte: a sealed `.seg` segment of three records with one byte of the
  middle record inverted, at every offset of that record (one per offset);
- a segment whose header has a flipped byte (the whole file is quarantined,
  none of its records is trusted), and an empty `.open` file (deleted).

Then: S3 holds exactly the intact records (none of a damaged one, nothing
invented), `quarantine/` holds exactly the bad bytes, the start-up log line and
the quarantine metric count them, and the process serves and audits new
requests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from sidecar_audit.spool import QUARANTINE_DIR, segment_stem
from sidecar_audit.spool.recovery import HEADER_SIZE, SegmentHeader, encode_frame, encode_header
from tests.faults.load import run_load
from tests.faults.observe import health, log_objects, logged, scrape, wait_for
from tests.faults.reconcile import assert_exactly_once, report, wait_reconciled
from tests.sidecar_fixture import StartSidecar
from tests.standin_fixture import Standin

RECORDS_PER_SEGMENT = 3


@dataclass
class Crafted:
    """The spool directory as written, and what recovery must make of it."""

    intact: set[str] = field(default_factory=set)  # request ids that must reach S3
    damaged: set[str] = field(default_factory=set)  # request ids that must not
    quarantine: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes
    torn: int = 0
    flipped: int = 0
    segments: int = 0

    def segment(self, kind: str, number: int) -> tuple[str, bytes, list[int], list[str]]:
        """A clean segment of three records: stem, bytes, frame offsets, request ids."""
        self.segments += 1
        now_us = time.time_ns() // 1000
        header = SegmentHeader(f"{self.segments:016x}", 0, now_us - self.segments)
        data = bytearray(encode_header(header))
        starts, ids = [], []
        for index in range(RECORDS_PER_SEGMENT):
            request_id = f"dmg-{kind}-{number:04d}-{index}"
            starts.append(len(data))
            data += encode_frame(_record(request_id, now_us), now_us)
            ids.append(request_id)
        starts.append(len(data))
        return segment_stem(header), bytes(data), starts, ids


def _record(request_id: str, time_us: int) -> bytes:
    stamp = datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps({"schemaVersion": 1, "requestId": request_id, "timestamp": stamp})


def craft(spool: Path) -> Crafted:
    spool.mkdir(parents=True)
    crafted = Crafted()
    _, _, layout, _ = crafted.segment("smpl", 0)  # ids have a fixed width: same offsets
    crafted.segments = 0
    last_frame = range(layout[2] + 1, layout[3])  # every cut inside the last record
    middle_frame = range(layout[1], layout[2])  # every byte of the middle record

    for cut in last_frame:
        stem, data, starts, ids = crafted.segment("torn", cut)
        assert starts == layout
        (spool / f"{stem}.open").write_bytes(data[:cut])
        crafted.intact.update(ids[:2])
        crafted.damaged.add(ids[2])
        crafted.quarantine[f"{stem}.{starts[2]}-{cut}.bad"] = data[starts[2] : cut]
        crafted.torn += 1

    for position in middle_frame:
        stem, data, starts, ids = crafted.segment("flip", position)
        assert starts == layout
        bad = bytearray(data)
        bad[position] ^= 0xFF
        (spool / f"{stem}.seg").write_bytes(bytes(bad))
        crafted.intact.update([ids[0], ids[2]])
        crafted.damaged.add(ids[1])
        crafted.quarantine[f"{stem}.{starts[1]}-{starts[2]}.bad"] = bytes(
            bad[starts[1] : starts[2]]
        )
        crafted.flipped += 1

    stem, data, _, ids = crafted.segment("head", 0)
    bad = bytearray(data)
    bad[HEADER_SIZE // 2] ^= 0xFF
    (spool / f"{stem}.seg").write_bytes(bytes(bad))
    crafted.damaged.update(ids)
    crafted.quarantine[f"{stem}.seg.bad"] = bytes(bad)

    (spool / f"{segment_stem(SegmentHeader('ff' * 8, 0, 0))}.open").write_bytes(b"")
    return crafted


async def test_damaged_segments_ship_intact_records_quarantine_the_rest_and_keep_serving(
    standin_session: Standin, start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    spool = tmp_path / "damaged-spool"
    crafted = craft(spool)
    sidecar = start_sidecar(standin_session.url, spool_dir=spool)

    served = await run_load(sidecar.url, 6, 3, "after-damage")
    assert [a.status for a in served.answers] == [200] * 6
    expected = crafted.intact | {a.request_id for a in served.answers}
    shipped = await asyncio.to_thread(
        wait_for,
        lambda: scrape(sidecar.metrics_url),
        lambda s: s.value("llm_audit_records_shipped_total") >= len(expected),
        "every intact record shipped",
    )
    result = await asyncio.to_thread(
        wait_reconciled, sidecar.moto_url, sidecar.bucket, expected, (), 10.0
    )
    [recovered] = logged(sidecar.log_lines(), "audit spool recovered")
    report(
        "spool-damage",
        result,
        torn_segments=crafted.torn,
        flipped_segments=crafted.flipped,
        damaged_records=len(crafted.damaged),
        quarantined_bytes=recovered["quarantinedBytes"],
    )
    assert_exactly_once(result)  # no record of a damaged frame: it would be "invented"

    quarantine = spool / QUARANTINE_DIR
    found = {p.name: p.read_bytes() for p in quarantine.iterdir()}
    assert found.keys() == crafted.quarantine.keys()
    assert found == crafted.quarantine
    quarantined_bytes = sum(len(b) for b in crafted.quarantine.values())
    assert {k: recovered[k] for k in recovered if k in _COUNTS} == {
        "adoptedSegments": crafted.torn,
        "tornTails": crafted.torn,
        "corruptRanges": crafted.torn + crafted.flipped,
        "quarantinedFiles": 1,
        "quarantinedBytes": quarantined_bytes,
        "deletedEmpty": 1,
        "records": len(crafted.intact),
    }
    assert shipped.value("llm_audit_spool_quarantined_bytes_total") == quarantined_bytes
    assert not [p for p in spool.iterdir() if p.suffix in (".open", ".seg")]
    assert health(sidecar.url)[0] == 200
    log_objects(sidecar.all_log_lines())


_COUNTS = {
    "adoptedSegments",
    "tornTails",
    "corruptRanges",
    "quarantinedFiles",
    "quarantinedBytes",
    "deletedEmpty",
    "records",
}
