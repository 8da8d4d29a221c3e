"""Child processes for the tests: the project's one implementation (central_llm_ops.children).

`Proc` is a `Child`: start with a log file in its own session, `log()`,
`signal()`, `stop()` (SIGTERM, then SIGKILL to the group), `kill()`.
"""

from __future__ import annotations

from central_llm_ops.children import Child as Proc
from central_llm_ops.children import free_port, python_module, wait_http

__all__ = ["Proc", "free_port", "python_module", "wait_http"]
