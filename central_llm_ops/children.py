"""Child processes: start one with a log file, wait until it answers HTTP, stop it for sure.

The one home for this job, used by the no-Docker stack (`local_stack.py`), the
benchmark (`bench/`) and the test suite (`tests/procs.py`).

Invariants: every child runs in its own session, so a stop reaches its whole
process group; its stdout and stderr go to `<log_dir>/<name>.log` (appended);
`stop()` sends SIGTERM, then SIGKILL to the group after the grace period, and
stopping twice is harmless; `killed` says whether the grace period ran out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path


def free_port(span: int = 1, avoid: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, with the `span - 1` after it
    free too (a sidecar with WORKERS=n serves metrics on METRICS_PORT..METRICS_PORT+n-1),
    none of them in `avoid`: ports picked for the same process a moment earlier are free
    again until it binds them, and the kernel may hand one out twice."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if any(port + i in avoid for i in range(span)):
            continue
        if all(_bindable(port + i) for i in range(1, span)):
            return port
    raise OSError(f"no run of {span} free ports found")


def _bindable(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def python_module(module: str, *args: str) -> list[str]:
    """argv running `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGTERM this child when its parent dies (Linux), even by SIGKILL."""

    def arm() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl
                os._exit(1)

    return arm


class Child:
    """A child process in its own session, its output in one log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.killed = False
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env or {})
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()) if die_with_parent else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> list[str]:
        return self.log().splitlines()[-lines:]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.tail(lines))

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after `grace_s`; the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process and its whole session (children included)."""
        if self.alive():
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stopped_cleanly(self) -> bool:
        return not self.killed and self.popen.returncode in (0, -signal.SIGTERM)


def wait_http(url: str, child: Child | None = None, timeout: float = 60.0) -> None:
    """Block until `url` answers with any HTTP status; fail with the child's log otherwise.

    Proxies from the environment are bypassed: everything here is on loopback.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(
                f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}"
            )
        try:
            with opener.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    detail = child.log_tail() if child is not None else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})\n{detail}")
