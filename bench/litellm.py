"""LiteLLM's proxy (`litellm[proxy]`), what a user would pick instead, pointed at the same upstream.

LiteLLM pins many packages, so it lives in its own virtualenv and is found as a
command: `--litellm PATH` (its `litellm` script, a venv's python, or the venv
directory), else `litellm` on PATH. Its config maps one model name to
`openai/<upstream model>` with `api_base` the stand-in's `/v1`; it runs one
worker bound to loopback, with a master key (it refuses to start without one)
and the bundled model cost map (no fetch from the internet). Everything else is
LiteLLM's default, as a user would run it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.children import Child, free_port, wait_ready
from bench.target import AUDIT_HEADERS, ChildRunning, LaunchContext, Target

MODEL_NAME = "bench-model"
MASTER_KEY = "sk-bench-local-only"

_CONFIG = """\
model_list:
  - model_name: {model_name}
    litellm_params:
      model: openai/{upstream_model}
      api_base: {upstream_url}/v1
      api_key: none
general_settings:
  master_key: {master_key}
"""


def litellm_command(explicit: str | None) -> list[str] | None:
    """argv prefix that runs LiteLLM's proxy CLI, or None when it is not installed."""
    if explicit is None:
        found = shutil.which("litellm")
        return [found] if found else None
    path = Path(explicit)
    if path.is_dir():
        path = path / "bin" / "litellm"
    if path.name.startswith("python"):
        return [str(path), "-m", "litellm.proxy.proxy_cli"]
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"--litellm {explicit}: not an executable or a virtualenv")
    return [str(path)]


def start_litellm(ctx: LaunchContext, command: list[str]) -> ChildRunning:
    config = ctx.workdir / f"litellm-{ctx.cell_id}.yaml"
    config.write_text(
        _CONFIG.format(
            model_name=MODEL_NAME,
            upstream_model=ctx.upstream.model,
            upstream_url=ctx.upstream.url,
            master_key=MASTER_KEY,
        )
    )
    port = free_port()
    child = Child(
        f"litellm-{ctx.cell_id}",
        [
            *command,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        log_dir=ctx.log_dir,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"},
        cwd=ctx.workdir,
    )
    wait_ready(child, f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
    headers = (*AUDIT_HEADERS, ("Authorization", f"Bearer {MASTER_KEY}"))
    target = Target("litellm", "127.0.0.1", port, MODEL_NAME, headers, (child.pid,))
    return ChildRunning(target, child)
