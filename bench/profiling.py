"""Sampling profiles of a system under test with py-spy, and their summary by self time.

`Profiler.attach(pid, seconds)` runs `py-spy record --format raw` (collapsed
stacks: `frame;frame;...;leaf count` per line, which speedscope and the usual
flame-graph tools read) for the measurement window of a profiled cell;
`summarise()` turns such a file into the top frames by self time (the leaf of a
sample) and by total time (anywhere on the stack, counted once per sample), and
self time per source file, each with its share of all samples.

Invariants: py-spy samples only non-idle threads by default, so shares are of
the time the process was busy; a profiled cell perturbs the process it samples,
so its numbers are reported apart from the matrix and never enter its medians.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def frame_name(frame: str) -> str:
    """`func (path/file.py:123)` -> `path/file.py:func` (one entry per function, no line)."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['file']}:{match['func']}"


def frame_file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match["file"] if match is not None else frame


def summarise(collapsed: str, top: int = 20) -> dict[str, Any]:
    """Top frames by self and total time, and self time by file, from collapsed stacks."""
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        self_time[frame_name(leaf)] += count
        by_file[frame_file(leaf)] += count
        for name in {frame_name(frame) for frame in frames}:
            total_time[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": name, "samples": n, "percent": round(100.0 * n / samples, 2)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "self": table(self_time),
        "total": table(total_time),
        "self_by_file": table(by_file),
    }


@dataclass
class Profiler:
    """Attaches py-spy to one process for a fixed time; `finish()` waits and summarises."""

    binary: str
    output: Path
    native: bool = False
    rate: int = 100
    _proc: subprocess.Popen[bytes] | None = None

    def attach(self, pid: int, seconds: float) -> None:
        argv = [
            self.binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--output",
            str(self.output),
        ]
        if self.native:
            argv.append("--native")
        log = self.output.with_suffix(".log").open("wb")
        with log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, top: int = 20) -> dict[str, Any] | None:
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if not self.output.exists():
            log = self.output.with_suffix(".log")
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            return {"error": f"py-spy wrote no profile: {detail}"}
        summary = summarise(self.output.read_text(errors="replace"), top)
        summary["file"] = str(self.output)
        return summary
