"""Process-tree accounting from /proc: CPU seconds and resident memory of a system under test.

A *tree* is one or more root pids plus every live descendant at the moment of
reading (nginx's master and worker, a Python server and anything it forked).

Invariants:
- CPU is `utime + stime + cutime + cstime` (clock ticks, /proc/<pid>/stat fields
  14-17) summed over the tree, so a descendant that exited and was reaped still
  counts through its parent. Only differences between two readings mean anything.
- RSS is resident pages (/proc/<pid>/statm, field 2) times the page size, summed
  over the tree: shared pages of forked processes count once per process, as
  `ps` would add them up.
- A process that vanishes between listing and reading is skipped, never an error.
Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One reading of a tree: CPU seconds so far, resident bytes now, how many processes."""

    cpu_s: float
    rss_bytes: int
    processes: int


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def parent_map() -> dict[int, list[int]]:
    """Every live pid's children, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(roots: Iterable[int]) -> list[int]:
    """The roots (those still alive) and all their live descendants."""
    children = parent_map()
    out: list[int] = []
    stack = [pid for pid in roots if (PROC / str(pid)).exists()]
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes and of their reaped children, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state=0, ppid=1, ..., utime=11, stime=12, cutime=13, cstime=14.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: Iterable[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            statm = (PROC / str(pid) / "statm").read_bytes().split()
        except OSError:
            continue
        total += int(statm[1]) * page
    return total


def sample(roots: Sequence[int]) -> TreeSample:
    pids = tree(roots)
    return TreeSample(cpu_s=cpu_seconds(pids), rss_bytes=rss_bytes(pids), processes=len(pids))
