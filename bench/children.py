"""Child processes of a benchmark run: the project's one implementation, plus what bench adds.

`Child`, `free_port`, `python_module`, `wait_http` are central_llm_ops.children
(own session, log file, SIGTERM then SIGKILL to the group; stopping twice is
harmless). Here: the repository root on PYTHONPATH, and `wait_ready`, which
stops a system that never answers.
"""

from __future__ import annotations

import os
from pathlib import Path

from central_llm_ops.children import Child, free_port, python_module, wait_http

__all__ = [
    "REPO_ROOT",
    "Child",
    "free_port",
    "python_module",
    "repo_pythonpath",
    "wait_http",
    "wait_ready",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_pythonpath() -> dict[str, str]:
    """Environment making the repository's top-level packages (`bench`) importable."""
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{existing}" if existing else str(REPO_ROOT)}


def wait_ready(child: Child, url: str, timeout: float) -> None:
    """`wait_http` for a system just started: a child that never answers is stopped."""
    try:
        wait_http(url, child, timeout=timeout)
    except BaseException:
        child.stop()
        raise
