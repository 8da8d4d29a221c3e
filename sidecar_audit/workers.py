"""Run the sidecar: one process, or several workers sharing the port with SO_REUSEPORT.

With `WORKERS=1` (the default) the process serves itself. With more, the
parent forks the workers before any event loop exists and only supervises:

- every worker binds the same port with SO_REUSEPORT (the kernel spreads
  connections), writes its own spool segments in the shared `AUDIT_SPOOL_DIR`
  (segment names carry a per-process writer id; ownership is by flock, see
  SPOOL.md) and ships any sealed or orphaned segment it finds there, so
  changing the worker count never strands a record;
- worker `i` serves Prometheus metrics on `METRICS_PORT + i`;
- SIGTERM/SIGINT to the parent is passed to every worker, which drains as a
  single process would; the parent exits with the highest worker exit code;
- a worker that dies on its own (not during a stop) is started again after a
  second, on the same spool directory, so the records it spooled are shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from types import FrameType

from aiohttp import web

from .app import EXIT_CODE, build_app
from .config import Config

log = logging.getLogger("sidecar_audit")

RESTART_DELAY_S = 1.0


def run_worker(config: Config, *, reuse_port: bool) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (see __main__)."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app = build_app(config)
    app.on_startup.append(_settle_heap)  # after every cleanup_ctx has started
    web.run_app(
        app,
        host=config.listen_host,
        port=config.listen_port,
        reuse_port=reuse_port or None,
        shutdown_timeout=config.shutdown_grace,
        handler_cancellation=True,
        access_log=None,
        print=None,
        backlog=1024,
        # Request bodies are forwarded exactly as the client encoded them (Content-Encoding
        # included); the record decodes its own copy, capped (record.py).
        auto_decompress=False,
        loop=loop,
    )
    return app[EXIT_CODE][0]


# A gen-0 pass walks the young objects still alive: at 128 streams that is the state of
# the streams started since the last pass (~14k objects, 1-3 ms). At CPython's default
# threshold (700 net allocations) that was ~6 passes a second, 1.2 % of the time with
# every stream stopped; at 10,000 the passes are as long (the live set bounds them) and
# the measured window had none. Garbage waits longer only if it is cyclic, which the
# request path never leaves (tests/sidecar/test_heap.py).
GC_YOUNG_THRESHOLD = 10_000
# The event loop thread waits for the GIL whenever another thread runs Python: the
# shipper's segment work (reading and checking a sealed segment, building its objects:
# 5-20 ms of Python every flush) and the spool's sync thread. uvloop releases the GIL
# around every poll, so each loop iteration then waited up to CPython's default switch
# interval, 5 ms, for the GIL: a 10 ms stall of every stream at each flush. At 0.5 ms
# an iteration waits at most that long; the background work is not urgent.
GIL_SWITCH_INTERVAL_S = 0.0005


async def _settle_heap(_app: web.Application) -> None:
    """Before serving: move the start-up heap out of the cyclic GC's reach, make the
    young-generation passes rare (bench/README.md, "GC pauses") and the GIL's hand-over
    to the event loop prompt ("The GIL" there).

    The start-up heap (~100k objects, mostly botocore's service models) never becomes
    garbage, yet every full collection walked it: 60-90 ms with the event loop stopped,
    every stream waiting. Frozen (`gc.freeze()`), a full collection walks only what
    came later. Frozen objects are still freed when their last reference goes; only a
    cycle among them is kept, at most once per process (the start-up state lives as
    long as the process anyway; RSS flat over 6,000 requests).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    log.info(
        "start-up heap frozen",
        extra={
            "frozenObjects": gc.get_freeze_count(),
            "gcThresholds": gc.get_threshold(),
            "gilSwitchIntervalS": sys.getswitchinterval(),
        },
    )


def worker_config(config: Config, index: int) -> Config:
    metrics_port = config.metrics_port + index if config.metrics_port else 0
    return replace(config, metrics_port=metrics_port)


class Supervisor:
    """Forks the workers, forwards stop signals, restarts workers that die unasked."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._children: dict[int, int] = {}  # pid -> worker index
        self._stopping = False
        self._exit_code = 0

    def run(self) -> int:
        for index in range(self._config.workers):
            self._spawn(index)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info(
            "workers started",
            extra={"workers": self._config.workers, "pids": sorted(self._children)},
        )
        while self._children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait()
                continue
            if pid not in self._children:
                continue
            index = self._children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                self._exit_code = max(self._exit_code, code if code >= 0 else 1)
            else:
                log.error(
                    "worker exited; starting it again",
                    extra={"worker": index, "pid": pid, "exitCode": code},
                )
                time.sleep(RESTART_DELAY_S)
                if not self._stopping:
                    self._spawn(index)
        return self._exit_code

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(worker_config(self._config, index), reuse_port=True)
            finally:
                logging.shutdown()
                sys.stdout.flush()
                os._exit(code)
        self._children[pid] = index

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def serve(config: Config) -> int:
    if config.workers == 1:
        return run_worker(config, reuse_port=False)
    return Supervisor(config).run()
