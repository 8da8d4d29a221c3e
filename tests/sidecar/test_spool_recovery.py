"""Recovery of segment files: one test per row of the decision table in spool/recovery.py.

Every test builds real segment files, damages them the way a crash or a bad
disk would, and checks that recovery keeps every intact record, invents none,
and puts the bad bytes in quarantine.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar_audit.spool import QUARANTINE_DIR, Spool
from sidecar_audit.spool.recovery import (
    HEADER_SIZE,
    FileRecovery,
    Frame,
    RecoveryReport,
    SegmentHeader,
    Verdict,
    decode_frames,
    encode_frame,
    encode_header,
    recover_directory,
    recover_file,
    try_lock,
)

STEM = "20270115T080000000000Z-00000000000000aa-0000000000"
T0_US = 1_800_000_000_000_000


def record(n: int, pad: int = 0) -> bytes:
    return b'{"requestId":"r%d","pad":"%s"}' % (n, b"y" * pad)


def segment_bytes(count: int, pad: int = 0) -> tuple[bytes, list[int]]:
    """A segment with `count` records; also the file offset where each frame starts."""
    data = bytearray(encode_header(SegmentHeader("00000000000000aa", 0, T0_US)))
    starts = []
    for n in range(count):
        starts.append(len(data))
        data += encode_frame(record(n, pad), T0_US + n)
    return bytes(data), starts


def spool_dir(tmp_path: Path) -> tuple[Path, Path]:
    quarantine = tmp_path / QUARANTINE_DIR
    quarantine.mkdir(parents=True, exist_ok=True)
    return tmp_path, quarantine


def recover(path: Path, quarantine: Path) -> FileRecovery:
    fd = try_lock(path)
    assert fd is not None
    try:
        return recover_file(fd, path, quarantine)
    finally:
        os.close(fd)


def quarantined(quarantine: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(quarantine.iterdir())}


# --- the decision table -----------------------------------------------------------------


def test_row_empty_file_is_deleted(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    path = directory / f"{STEM}.open"
    path.write_bytes(b"")
    rec = recover(path, quarantine)
    assert rec.verdict is Verdict.EMPTY
    assert not path.exists()
    assert quarantined(quarantine) == {}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda h: h[:20], id="short"),
        pytest.param(lambda h: b"X" + h[1:], id="magic"),
        pytest.param(lambda h: h[:25] + bytes([h[25] ^ 1]) + h[26:], id="crc"),
        pytest.param(lambda h: _with_crc(h[:8] + b"\x02\x00" + h[10:36]), id="version"),
    ],
)
def test_row_bad_header_moves_the_whole_file_to_quarantine(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, _ = segment_bytes(3)
    bad = damage(data[:HEADER_SIZE]) + data[HEADER_SIZE:]
    path = directory / f"{STEM}.seg"
    path.write_bytes(bad)
    rec = recover(path, quarantine)
    assert rec.verdict is Verdict.BAD_HEADER
    assert rec.frames == []  # frames after a bad header are never trusted
    assert not path.exists()
    assert quarantined(quarantine) == {f"{STEM}.seg.bad": bad}
    assert rec.quarantined_bytes == len(bad)


def _with_crc(first36: bytes) -> bytes:
    return first36 + zlib.crc32(first36).to_bytes(4, "little")


def test_row_clean_segment_is_left_as_it_is(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, _ = segment_bytes(4)
    path = directory / f"{STEM}.seg"
    path.write_bytes(data)
    rec = recover(path, quarantine)
    assert rec.verdict is Verdict.RECORDS
    assert [f.payload for f in rec.frames] == [record(n) for n in range(4)]
    assert path.read_bytes() == data
    assert quarantined(quarantine) == {}


def test_row_torn_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    data, starts = segment_bytes(3, pad=150)
    last = starts[-1]
    for cut in range(last + 1, len(data)):
        directory, quarantine = spool_dir(tmp_path / str(cut))
        path = directory / f"{STEM}.open"
        path.write_bytes(data[:cut])
        rec = recover(path, quarantine)
        assert rec.verdict is Verdict.RECORDS, cut
        assert [f.payload for f in rec.frames] == [record(0, 150), record(1, 150)], cut
        assert path.read_bytes() == data[:last], cut  # truncated to the last good frame
        assert quarantined(quarantine) == {f"{STEM}.{last}-{cut}.bad": data[last:cut]}, cut
        assert rec.torn_tail_bytes == cut - last


def test_row_torn_tail_is_cut_at_start_up_through_spool_open(tmp_path: Path) -> None:
    data, starts = segment_bytes(3)
    (tmp_path / f"{STEM}.open").write_bytes(data[: starts[-1] + 5])
    spool = Spool(tmp_path)
    report = asyncio.run(_open_close(spool))
    assert (report.adopted, report.records, report.torn_tails) == (1, 2, 1)
    assert report.quarantined_bytes == 5
    assert (tmp_path / f"{STEM}.seg").read_bytes() == data[: starts[-1]]


async def _open_close(spool: Spool) -> RecoveryReport:
    report = await spool.open()
    await spool.close()
    return report


def test_row_flipped_byte_anywhere_in_a_middle_record_resyncs(tmp_path: Path) -> None:
    data, starts = segment_bytes(4, pad=20)
    begin, end = starts[1], starts[2]
    for position in range(begin, end):
        directory, quarantine = spool_dir(tmp_path / str(position))
        damaged = bytearray(data)
        damaged[position] ^= 0x40
        path = directory / f"{STEM}.seg"
        path.write_bytes(damaged)
        rec = recover(path, quarantine)
        assert [f.payload for f in rec.frames] == [record(n, 20) for n in (0, 2, 3)], position
        assert quarantined(quarantine) == {f"{STEM}.{begin}-{end}.bad": bytes(damaged[begin:end])}
        assert path.read_bytes() == damaged  # the file is kept; reads skip the range


def test_row_implausible_length_in_the_middle_resyncs(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, starts = segment_bytes(3)
    damaged = bytearray(data)
    damaged[starts[1] + 4 : starts[1] + 8] = (2**32 - 1).to_bytes(4, "little")
    path = directory / f"{STEM}.seg"
    path.write_bytes(damaged)
    rec = recover(path, quarantine)
    assert [f.payload for f in rec.frames] == [record(0), record(2)]
    assert rec.corrupt_ranges == 1
    assert rec.quarantined_bytes == starts[2] - starts[1]


def test_row_a_quarantined_range_is_copied_and_counted_once(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, starts = segment_bytes(3)
    damaged = bytearray(data)
    damaged[starts[1] + 25] ^= 1
    path = directory / f"{STEM}.seg"
    path.write_bytes(damaged)
    first, second = recover(path, quarantine), recover(path, quarantine)
    assert first.quarantined_bytes == starts[2] - starts[1]
    assert second.quarantined_bytes == 0
    assert [f.payload for f in second.frames] == [record(0), record(2)]
    assert len(quarantined(quarantine)) == 1


def test_row_no_valid_frame_left_deletes_the_file(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, _ = segment_bytes(1)
    path = directory / f"{STEM}.seg"
    path.write_bytes(data[:-3])
    rec = recover(path, quarantine)
    assert rec.verdict is Verdict.NO_RECORDS
    assert not path.exists()
    assert list(quarantined(quarantine).values()) == [data[HEADER_SIZE:-3]]


def test_row_header_only_segment_is_deleted(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, _ = segment_bytes(0)
    path = directory / f"{STEM}.open"
    path.write_bytes(data)
    assert recover(path, quarantine).verdict is Verdict.NO_RECORDS
    assert not path.exists()
    assert quarantined(quarantine) == {}


# --- ownership --------------------------------------------------------------------------


def test_a_dead_writers_open_segment_is_adopted_and_sealed(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, _ = segment_bytes(3)
    (directory / f"{STEM}.open").write_bytes(data)
    report, summaries = recover_directory(directory, quarantine, verify_sealed=True)
    assert (report.adopted, report.segments, report.records) == (1, 1, 3)
    assert not (directory / f"{STEM}.open").exists()
    assert (directory / f"{STEM}.seg").read_bytes() == data
    assert [(s.stem, s.sealed, s.created_us) for s in summaries] == [(STEM, True, T0_US)]


def test_a_live_writers_segment_is_left_alone(tmp_path: Path) -> None:
    directory, quarantine = spool_dir(tmp_path)
    data, starts = segment_bytes(2)
    torn = data[: starts[-1] + 3]  # looks torn, but its writer is alive and mid-write
    path = directory / f"{STEM}.open"
    path.write_bytes(torn)
    holder = try_lock(path)  # a live writer holds the flock
    assert holder is not None
    try:
        report, summaries = recover_directory(directory, quarantine, verify_sealed=True)
    finally:
        os.close(holder)
    assert report.busy == 1 and report.adopted == 0
    assert path.read_bytes() == torn
    assert [(s.stem, s.sealed, s.size) for s in summaries] == [(STEM, False, len(torn))]
    assert quarantined(quarantine) == {}


async def test_a_sealed_segment_has_one_lease_at_a_time(tmp_path: Path) -> None:
    data, _ = segment_bytes(2)
    (tmp_path / f"{STEM}.seg").write_bytes(data)
    first, second = Spool(tmp_path), Spool(tmp_path)  # two shippers on one directory
    await first.open()
    await second.open()
    try:
        lease = await first.lease(STEM)
        assert lease is not None
        assert await second.lease(STEM) is None  # held
        first.shipped(lease)
        assert await second.lease(STEM) is None  # gone
        assert await second.pending() == []
    finally:
        await first.close()
        await second.close()


def test_spool_open_reports_every_leftover(tmp_path: Path) -> None:
    sealed, _ = segment_bytes(2)
    torn, starts = segment_bytes(3)
    other = STEM.replace("-0000000000", "-0000000001")
    third = STEM.replace("-0000000000", "-0000000002")
    (tmp_path / f"{STEM}.seg").write_bytes(sealed)
    (tmp_path / f"{other}.open").write_bytes(torn[: starts[-1] + 7])
    (tmp_path / f"{third}.open").write_bytes(b"")
    spool = Spool(tmp_path)
    report = asyncio.run(_open_close(spool))
    fields = report.as_log_fields()
    assert fields["segments"] == 2
    assert fields["records"] == 4
    assert fields["adoptedSegments"] == 1
    assert fields["tornTails"] == 1
    assert fields["quarantinedBytes"] == 7
    assert fields["deletedEmpty"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{STEM}.seg", f"{other}.seg", QUARANTINE_DIR]
    )


def test_frames_decode_where_recovery_left_them(tmp_path: Path) -> None:
    """After recovery, a plain decode of the file agrees with what recovery returned."""
    directory, quarantine = spool_dir(tmp_path)
    data, starts = segment_bytes(5)
    damaged = bytearray(data[: starts[-1] + 2])
    damaged[starts[2] + 22] ^= 0xFF
    path = directory / f"{STEM}.seg"
    path.write_bytes(damaged)
    rec = recover(path, quarantine)
    events = decode_frames(path.read_bytes()[HEADER_SIZE:], HEADER_SIZE)
    assert [e for e in events if isinstance(e, Frame)] == rec.frames
    assert [f.payload for f in rec.frames] == [record(0), record(1), record(3)]
