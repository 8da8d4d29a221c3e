"""Both Dockerfiles: hadolint-clean, pinned, non-root, signals and health checks that work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.deploy.tools import ROOT, require_tool
from tests.procs import free_port

SIDECAR_DOCKERFILE = ROOT / "sidecar_audit" / "Dockerfile"
VLLM_DOCKERFILE = ROOT / "vllm_engine" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def arg_default(path: Path, name: str) -> str:
    for keyword, rest in instructions(path):
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name} with a default in {path}")


@pytest.mark.parametrize(
    "dockerfile", [SIDECAR_DOCKERFILE, VLLM_DOCKERFILE], ids=["sidecar", "vllm"]
)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_base_is_pinned_to_a_patch_release() -> None:
    image = arg_default(SIDECAR_DOCKERFILE, "PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), image


def test_vllm_base_is_a_pinned_vllm_release() -> None:
    image = arg_default(VLLM_DOCKERFILE, "VLLM_BASE_IMAGE")
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", image), image


def test_sidecar_image_runs_as_non_root_python_as_pid_1() -> None:
    stage = final_stage(SIDECAR_DOCKERFILE)
    assert stage[0][1].endswith(" AS sidecar"), "the default target must be the sidecar"
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users and users[-1] not in ("0", "root")
    entrypoint = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"][-1]
    # Exec form: no shell in between, SIGTERM reaches Python.
    assert json.loads(entrypoint) == ["python", "-m", "sidecar_audit"]
    assert any(keyword == "HEALTHCHECK" for keyword, _ in stage)


def test_vllm_image_execs_the_entrypoint_and_never_keeps_the_token() -> None:
    steps = instructions(VLLM_DOCKERFILE)
    entrypoint = [rest for keyword, rest in final_stage(VLLM_DOCKERFILE) if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint[-1]) == ["/usr/local/bin/central-llm-vllm"]
    assert "exec vllm" in (ROOT / "vllm_engine" / "entrypoint.sh").read_text()
    download = next(
        rest for keyword, rest in steps if keyword == "RUN" and "snapshot_download" in rest
    )
    assert "--mount=type=secret,id=hf_token,env=HF_TOKEN" in download
    for keyword, rest in steps:
        if keyword in ("ARG", "ENV", "LABEL"):
            assert "HF_TOKEN" not in rest, (keyword, rest)


def test_docker_context_allows_what_the_sidecar_image_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context is an allow-list"
    allowed = {p.lstrip("!").rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in instructions(SIDECAR_DOCKERFILE):
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _target = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, source


# --- the sidecar's HEALTHCHECK probe, run for real ------------------------------


def healthcheck_program() -> list[str]:
    stage = final_stage(SIDECAR_DOCKERFILE)
    rest = next(rest for keyword, rest in stage if keyword == "HEALTHCHECK")
    argv: list[str] = json.loads(rest[rest.index("CMD") + 3 :].strip())
    return argv


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"status": request.param})
    server = HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_probe(port: int) -> int:
    argv = healthcheck_program()
    assert argv[0] == "python"
    result = subprocess.run(
        [sys.executable, *argv[1:]], env={"LISTEN_PORT": str(port)}, capture_output=True, timeout=30
    )
    return result.returncode


@pytest.mark.parametrize("health_server", [200, 503], indirect=True)
def test_probe_says_alive_when_the_proxy_answers(health_server: int) -> None:
    # 503 means "not ready" (the NLB's business), not "restart me".
    assert run_probe(health_server) == 0


def test_probe_says_dead_when_nothing_listens() -> None:
    assert run_probe(free_port()) != 0
