"""Fixtures of the fault tests: a cuttable path to S3, and a tiny filesystem for the spool.

- `s3_cut`: a `TcpCut` in front of the session's moto server. A sidecar started
  with `AWS_ENDPOINT_URL=s3_cut.url` loses S3 on `cut()` and gets it back on
  `restore()`; the test itself reads S3 straight from moto.
- `tiny_tmpfs`: a 96 KiB tmpfs mounted for the test (ENOSPC within a few dozen
  records); skipped with the reason when this machine does not allow mounting.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.tcp_cut import TcpCut

TINY_TMPFS_SIZE = "96k"


@pytest.fixture
def s3_cut(moto_server: str) -> Iterator[TcpCut]:
    cut = TcpCut(moto_server).start()
    try:
        yield cut
    finally:
        cut.stop()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "spool-tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TINY_TMPFS_SIZE},mode=0700",
            "tmpfs",
            str(mount_point),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a {TINY_TMPFS_SIZE} tmpfs for the spool (needs root or "
            f"CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
