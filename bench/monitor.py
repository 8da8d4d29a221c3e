"""A background sampler of a process tree's resident memory while a cell runs.

Invariants: one sample every `interval_s` (the first at `start()`), each the sum
over the tree's live processes (see `proctree`); `peak_bytes` is the largest
sum seen; the series (seconds since start, bytes) is kept only when asked for
(the soak), so a long run does not grow the harness's own memory otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from bench import proctree


class RssMonitor:
    def __init__(self, roots: Sequence[int], interval_s: float, keep_series: bool) -> None:
        self._roots = tuple(roots)
        self._interval = interval_s
        self._keep = keep_series
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)
        self._started = 0.0
        self.peak_bytes = 0
        self.last_bytes = 0
        self.series: list[tuple[float, int]] = []

    def start(self) -> RssMonitor:
        self._started = time.monotonic()
        if self._roots:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self.sample_now()
            if self._stop.wait(self._interval):
                return

    def sample_now(self) -> int:
        """Take one sample now (also used at the window's edges); returns it."""
        if not self._roots:
            return 0
        rss = proctree.rss_bytes(proctree.tree(self._roots))
        self.last_bytes = rss
        self.peak_bytes = max(self.peak_bytes, rss)
        if self._keep:
            self.series.append((round(time.monotonic() - self._started, 2), rss))
        return rss
