"""The spool's byte format, its durability points, sealing, and its failure modes, on a real disk.

Durability words under test: `append` returned -> survives SIGKILL (a real child
process is killed); `sync` returned -> survives a host crash (simulated by cutting
the file back to what the spool reports as synced, and checked against the
fsync calls it really made).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar_audit.spool import Spool, SpoolError, SpoolFailed, SpoolFull
from sidecar_audit.spool.recovery import (
    HEADER_SIZE,
    Corrupt,
    Frame,
    FrameDecoder,
    SegmentHeader,
    decode_frames,
    decode_header,
    encode_frame,
    encode_header,
)
from tests.procs import Proc

REPO = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def payload(n: int, pad: int = 0) -> bytes:
    return b'{"requestId":"r%d","pad":"%s"}' % (n, b"x" * pad)


async def spooled_payloads(directory: Path) -> list[bytes]:
    """Every record a fresh spool on `directory` would ship, in segment order."""
    spool = Spool(directory)
    await spool.open()
    out: list[bytes] = []
    try:
        for stem in await spool.pending():
            lease = await spool.lease(stem)
            assert lease is not None
            contents = await spool.read(lease)
            spool.release(lease)
            if contents is not None:
                out.extend(frame.payload for frame in contents.records)
    finally:
        await spool.close()
    return out


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def frames_in(path: Path) -> list[Frame | Corrupt]:
    return decode_frames(path.read_bytes()[HEADER_SIZE:], HEADER_SIZE)


# --- the format, pinned -----------------------------------------------------------------


def test_frame_bytes_are_pinned() -> None:
    frame = encode_frame(b'{"a":1}', 1_800_000_000_250_000)
    assert frame.hex() == (
        "f7a55a1f"  # sync magic
        "07000000"  # payload length, u32 LE
        "90509c2817650600"  # record time, i64 LE microseconds
        "5a655c25"  # CRC32
        "7b2261223a317d"  # payload
    )
    # The checksum is plain zlib CRC32 (not CRC32C) over length + time + payload.
    assert int.from_bytes(frame[16:20], "little") == zlib.crc32(frame[4:16] + frame[20:])


def test_header_bytes_are_pinned() -> None:
    header = encode_header(SegmentHeader("0123456789abcdef", 7, 1_800_000_000_500_000))
    assert header.hex() == (
        "434c4c4d53504f4c"  # b"CLLMSPOL"
        "0100"  # format version 1
        "2800"  # header length 40
        "0123456789abcdef"  # writer id
        "0700000000000000"  # sequence
        "2021a02817650600"  # created, microseconds
        "c89c08f2"  # CRC32 of the 36 bytes before it
    )
    assert int.from_bytes(header[36:], "little") == zlib.crc32(header[:36])
    assert decode_header(header) == SegmentHeader("0123456789abcdef", 7, 1_800_000_000_500_000)


async def test_a_small_segment_file_is_pinned_byte_for_byte(tmp_path: Path) -> None:
    spool = Spool(tmp_path, writer_id="0123456789abcdef", wall_clock=lambda: T0 + 0.5)
    await spool.open()
    spool.append(b'{"a":1}', T0 + 0.25)
    spool.append(b'{"b":22}', T0 + 0.75)
    await spool.seal_active()
    await spool.close()
    [sealed] = files(tmp_path, ".seg")
    assert sealed.name == "20270115T080000500000Z-0123456789abcdef-0000000000.seg"
    assert sealed.read_bytes().hex() == (
        "434c4c4d53504f4c01002800" "0123456789abcdef" "0000000000000000"
        "2021a02817650600" "bd64f10f"
        "f7a55a1f" "07000000" "90509c2817650600" "5a655c25" "7b2261223a317d"
        "f7a55a1f" "08000000" "b0f1a32817650600" "6d77456d" "7b2262223a32327d"
    )  # fmt: skip


def test_decoder_gives_the_same_frames_however_the_bytes_are_split() -> None:
    data = b"".join(encode_frame(payload(i, pad=i * 7), 10**15 + i) for i in range(4))
    whole = decode_frames(data)
    assert [f.payload for f in whole if isinstance(f, Frame)] == [
        payload(i, i * 7) for i in range(4)
    ]
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.finish() == whole
    decoder = FrameDecoder()
    one_by_one = [e for i in range(len(data)) for e in decoder.feed(data[i : i + 1])]
    assert one_by_one + decoder.finish() == whole


def test_decoder_reports_garbage_and_resyncs_on_the_next_valid_frame() -> None:
    first, second = encode_frame(payload(1), 1), encode_frame(payload(2), 2)
    garbage = b"\xf7\xa5\x5a\x1f" + b"\xff" * 9  # a magic whose frame does not validate
    events = decode_frames(first + garbage + second + b"\x00torn")
    a, b, c = len(first), len(first) + len(garbage), len(first) + len(garbage) + len(second)
    assert events == [
        Frame(0, a, 1, payload(1)),
        Corrupt(a, b, at_end=False),
        Frame(b, c, 2, payload(2)),
        Corrupt(c, c + 5, at_end=True),
    ]


# --- durability points ------------------------------------------------------------------

KILLED_WRITER = """
import asyncio, sys
from pathlib import Path
from sidecar_audit.spool import Spool

async def main() -> None:
    spool = Spool(Path(sys.argv[1]), fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    for i in range(int(sys.argv[2])):
        spool.append(b'{"requestId":"r%d"}' % i, 1_800_000_000 + i)
    print("appended", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_append_returned_means_the_record_survives_sigkill(
    tmp_path: Path, proc_log_dir: Path
) -> None:
    spool_dir = tmp_path / "spool"
    writer = Proc(
        "killed-writer",
        [sys.executable, "-c", KILLED_WRITER, str(spool_dir), "25"],
        log_dir=proc_log_dir,
        env={"PYTHONPATH": str(REPO)},
    )
    try:
        await _wait_for_line(writer, "appended")
    finally:
        writer.kill()  # SIGKILL: no seal, no fsync (the interval was an hour)
    [left] = files(spool_dir, ".open")
    assert [f.payload for f in frames_in(left) if isinstance(f, Frame)] == [
        b'{"requestId":"r%d"}' % i for i in range(25)
    ]
    assert await spooled_payloads(spool_dir) == [b'{"requestId":"r%d"}' % i for i in range(25)]


async def _wait_for_line(proc: Proc, line: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while line not in proc.log():
        assert proc.alive(), proc.log()
        assert time.monotonic() < deadline, proc.log()
        await asyncio.sleep(0.05)


class RecordingFsync:
    """The real os.fsync, remembering what each call covered."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, int]] = []  # (is a directory, file size at the time)
        self.fail_with: int | None = None

    def __call__(self, fd: int) -> None:
        if self.fail_with is not None:
            raise OSError(self.fail_with, "injected fsync failure")
        st = os.fstat(fd)
        self.calls.append((stat.S_ISDIR(st.st_mode), st.st_size))
        os.fsync(fd)


async def test_sync_fsyncs_everything_appended_before_it_and_append_never_fsyncs(
    tmp_path: Path,
) -> None:
    fsync = RecordingFsync()
    spool = Spool(tmp_path, fsync_interval_s=3600, segment_max_age_s=3600, fsync=fsync)
    await spool.open()
    for i in range(3):
        spool.append(payload(i), T0)
    assert fsync.calls == []  # append only writes
    [active] = spool.unsealed()
    assert active.synced_size == 0
    await spool.sync()
    assert (False, active.size) in fsync.calls  # the segment, as large as it was at the call
    assert any(is_dir for is_dir, _ in fsync.calls)  # and, the first time, its directory
    assert spool.unsealed()[0].synced_size == active.size
    calls = len(fsync.calls)
    spool.append(payload(3), T0)
    assert len(fsync.calls) == calls
    assert spool.stats().fsyncs == calls
    await spool.close()


async def test_group_commit_syncs_in_the_background(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    spool = Spool(tmp_path, fsync_interval_s=0.01, segment_max_age_s=3600, fsync=fsync)
    await spool.open()
    spool.append(payload(1), T0)
    size = spool.unsealed()[0].size
    await _until(lambda: spool.unsealed()[0].synced_size == size)
    assert (False, size) in fsync.calls
    await spool.close()


async def test_a_host_crash_keeps_what_sync_covered(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    spool.append(payload(1), T0)
    spool.append(payload(2), T0)
    await spool.sync()
    spool.append(payload(3), T0)
    await spool.abort()
    [segment] = spool.unsealed()
    assert segment.size > segment.synced_size
    os.truncate(segment.path, segment.synced_size)  # the page cache is gone
    assert await spooled_payloads(tmp_path) == [payload(1), payload(2)]


async def test_a_process_crash_keeps_everything_appended(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    for i in range(3):
        spool.append(payload(i), T0)
    await spool.abort()
    assert await spooled_payloads(tmp_path) == [payload(i) for i in range(3)]


# --- sealing ----------------------------------------------------------------------------


async def test_a_segment_is_sealed_at_max_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_records=2, fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    for i in range(5):
        spool.append(payload(i), T0)
    await spool.sync()  # the sync thread runs jobs in order: both seals are done
    assert [len(frames_in(p)) for p in files(tmp_path, ".seg")] == [2, 2]
    assert len(files(tmp_path, ".open")) == 1
    assert spool.stats().segments_sealed == 2
    await spool.close()


async def test_a_segment_is_sealed_before_it_would_exceed_max_bytes(tmp_path: Path) -> None:
    line = len(payload(0, pad=30)) + 1  # NDJSON bytes of one record
    spool = Spool(tmp_path, segment_max_bytes=2 * line + 1, fsync_interval_s=3600)
    await spool.open()
    for i in range(5):
        spool.append(payload(i, pad=30), T0)
    await spool.seal_active()
    assert [len(frames_in(p)) for p in files(tmp_path, ".seg")] == [2, 2, 1]
    await spool.close()


async def test_a_segment_is_sealed_at_max_age(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_age_s=0.05, fsync_interval_s=0.01)
    await spool.open()
    spool.append(payload(1), T0)
    await asyncio.wait_for(spool.sealed.wait(), 10)
    assert len(files(tmp_path, ".seg")) == 1
    assert files(tmp_path, ".open") == []
    await spool.close()


async def test_a_long_fsync_interval_does_not_hold_a_segment_past_its_age(
    tmp_path: Path,
) -> None:
    # AUDIT_SPOOL_FSYNC_INTERVAL_MS far above AUDIT_FLUSH_INTERVAL_S: the batch still
    # leaves at its age limit, not at the next group commit a minute later.
    spool = Spool(tmp_path, segment_max_age_s=0.3, fsync_interval_s=60)
    await spool.open()
    spool.append(payload(1), T0)
    started = time.monotonic()
    await asyncio.wait_for(spool.sealed.wait(), 10)
    assert time.monotonic() - started < 5
    assert len(files(tmp_path, ".seg")) == 1
    await spool.close()


async def test_segment_names_sort_by_creation_and_are_unique(tmp_path: Path) -> None:
    clock = iter(T0 + i for i in range(100))
    spool = Spool(
        tmp_path, segment_max_records=1, writer_id="00" * 8, wall_clock=lambda: next(clock)
    )
    await spool.open()
    for i in range(12):
        spool.append(payload(i), T0)
    await spool.sync()
    names = [p.name for p in files(tmp_path, ".seg")]
    assert len(set(names)) == 12
    assert [p for f in files(tmp_path, ".seg") for p in _payloads(f)] == [
        payload(i) for i in range(12)
    ]
    assert names[0] == "20270115T080000000000Z-0000000000000000-0000000000.seg"
    await spool.close()


def _payloads(path: Path) -> list[bytes]:
    return [f.payload for f in frames_in(path) if isinstance(f, Frame)]


# --- accounting -------------------------------------------------------------------------


async def test_stats_count_bytes_and_ship_lag_from_the_first_append(tmp_path: Path) -> None:
    now = [T0 + 10]
    spool = Spool(tmp_path, wall_clock=lambda: now[0], fsync_interval_s=3600)
    await spool.open()
    spool.append(payload(1), T0 - 600)  # a 10-minute stream: its request started long ago
    now[0] = T0 + 30
    spool.append(payload(2), T0 + 20)
    now[0] = T0 + 100
    stats = spool.stats()
    frame_bytes = len(encode_frame(payload(1), 0)) + len(encode_frame(payload(2), 0))
    assert stats.records_appended == 2
    assert stats.bytes_on_disk == HEADER_SIZE + frame_bytes
    assert stats.segments == 1
    assert stats.oldest_unshipped_age_s == pytest.approx(90.0)  # waiting since the 1st append
    await spool.close()
    assert await spooled_payloads(tmp_path) == [payload(1), payload(2)]


async def test_spool_full_refuses_with_a_distinct_error_until_shipping_frees_room(
    tmp_path: Path,
) -> None:
    frame = len(encode_frame(payload(0), 0))
    spool = Spool(tmp_path, max_bytes=HEADER_SIZE + 2 * frame, fsync_interval_s=3600)
    await spool.open()
    spool.append(payload(0), T0)
    spool.append(payload(1), T0)
    with pytest.raises(SpoolFull):
        spool.append(payload(2), T0)
    assert spool.is_full()
    assert spool.stats().refused_full == 1
    await spool.seal_active()
    [stem] = await spool.pending()
    lease = await spool.lease(stem)
    assert lease is not None
    spool.shipped(lease)
    assert not spool.is_full()
    assert spool.stats().bytes_on_disk == 0
    spool.append(payload(3), T0)
    await spool.close()


async def test_append_refuses_when_not_open_and_when_too_large(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="not open"):
        spool.append(payload(0), T0)
    await spool.open()
    with pytest.raises(SpoolError, match="exceeds"):
        spool.append(b"x" * (64 * 1024 * 1024 + 1), T0)
    await spool.close()
    with pytest.raises(SpoolError, match="not open"):
        spool.append(payload(0), T0)


# --- failures ---------------------------------------------------------------------------


async def test_an_fsync_failure_fails_the_spool_and_the_next_start_recovers(
    tmp_path: Path,
) -> None:
    fsync = RecordingFsync()
    spool = Spool(tmp_path, fsync_interval_s=0.01, segment_max_age_s=3600, fsync=fsync)
    await spool.open()
    spool.append(payload(1), T0)
    await spool.sync()
    fsync.fail_with = errno.EIO
    spool.append(payload(2), T0)
    await _until(lambda: spool.failed is not None)  # the background group commit hit it
    assert "injected fsync failure" in (spool.failed or "")
    assert spool.stats().fsync_failures >= 1
    assert spool.stats().failed == spool.failed
    with pytest.raises(SpoolFailed):
        spool.append(payload(3), T0)
    with pytest.raises(SpoolFailed):
        await spool.sync()
    await spool.close()  # does not seal: the segment stays `.open` for the next process
    assert len(files(tmp_path, ".open")) == 1
    assert await spooled_payloads(tmp_path) == [payload(1), payload(2)]


async def test_a_failed_seal_fails_the_spool(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    spool = Spool(tmp_path, fsync_interval_s=3600, fsync=fsync)
    await spool.open()
    spool.append(payload(1), T0)
    fsync.fail_with = errno.EIO
    with pytest.raises(SpoolFailed):
        await spool.seal_active()
    assert spool.failed is not None and "seal" in spool.failed
    await spool.close()
    assert await spooled_payloads(tmp_path) == [payload(1)]


FSIZE_WRITER = """
import asyncio, json, resource, sys
from pathlib import Path
from sidecar_audit.spool import Spool, SpoolError

async def main() -> None:
    spool = Spool(Path(sys.argv[1]), fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # writes past 4 KiB: EFBIG
    accepted, errors = [], []
    for i in range(40):
        record = b'{"requestId":"r%d","pad":"%s"}' % (i, b"x" * 200)
        try:
            spool.append(record, 1_800_000_000 + i)
            accepted.append(i)
        except SpoolError as exc:
            errors.append(type(exc).__name__ + ": " + str(exc))
    print(json.dumps({"accepted": accepted, "errors": errors, "failed": spool.failed,
                      "writeErrors": spool.stats().write_errors}))
    await spool.abort()

asyncio.run(main())
"""


def test_a_write_error_truncates_the_torn_frame_and_raises(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FSIZE_WRITER, str(tmp_path)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    accepted = result["accepted"]
    assert 0 < len(accepted) < 40
    assert accepted == list(range(len(accepted)))
    assert result["errors"][0].startswith("SpoolError: spool write failed: File too large")
    assert result["failed"] is None  # a write error is not fatal, unlike an fsync error
    assert result["writeErrors"] == 40 - len(accepted)
    [segment] = files(tmp_path, ".open")
    events = frames_in(segment)
    assert all(isinstance(e, Frame) for e in events)  # no torn frame was left behind
    assert len(events) == len(accepted)
    assert segment.stat().st_size == events[-1].end


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr!r}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_enospc_on_append_raises_spool_full_and_leaves_no_torn_frame(
    tiny_tmpfs: Path,
) -> None:
    spool = Spool(tiny_tmpfs, fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    accepted = 0
    with pytest.raises(SpoolFull, match="disk full"):
        for i in range(10_000):
            spool.append(payload(i, pad=1000), T0)
            accepted += 1
    assert spool.is_full()
    assert spool.stats().write_errors == 1
    [segment] = files(tiny_tmpfs, ".open")
    events = frames_in(segment)
    assert all(isinstance(e, Frame) for e in events)
    assert len(events) == accepted
    # Shipping the segment frees the disk; the spool takes records again.
    await spool.seal_active()
    [stem] = await spool.pending()
    lease = await spool.lease(stem)
    assert lease is not None
    spool.shipped(lease)
    assert not spool.is_full()
    spool.append(payload(0), T0)
    await spool.close()


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_a_recovery_pass_racing_a_new_segment_never_strands_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that locks, deletes and releases a brand-new (empty) segment file between
    the writer's open and its flock must not leave the writer on the deleted inode."""
    import fcntl
    from types import SimpleNamespace

    import sidecar_audit.spool.store as spool_module
    from sidecar_audit.spool.recovery import recover_directory

    spool = Spool(tmp_path, fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    raced: list[Path] = []

    def flock_after_a_pass(fd: int, op: int) -> None:
        if not raced:
            raced.extend(files(tmp_path, ".open"))
            recover_directory(tmp_path, tmp_path / "quarantine", verify_sealed=False)
        fcntl.flock(fd, op)

    monkeypatch.setattr(
        spool_module, "fcntl", SimpleNamespace(**{**vars(fcntl), "flock": flock_after_a_pass})
    )
    for i in range(3):
        spool.append(payload(i), T0)
    monkeypatch.undo()
    assert raced, "the pass never ran between open and flock"
    assert not raced[0].exists(), "the pass did not delete the empty file it raced"
    await spool.close()
    assert spool.failed is None
    assert await spooled_payloads(tmp_path) == [payload(i) for i in range(3)]
