"""package.json: the seed's `bun run logs:host` (and npm run) reach the operator scripts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib

from tests.deploy.tools import ROOT


def scripts() -> dict[str, str]:
    found: dict[str, str] = json.loads((ROOT / "package.json").read_text())["scripts"]
    return found


def test_logs_host_runs_the_host_logs_script() -> None:
    argv = shlex.split(scripts()["logs:host"])
    assert argv[0] == "scripts/ecs-host-logs.sh"
    assert os.access(ROOT / argv[0], os.X_OK)
    # Its arguments are ones the script takes (`bun run logs:host --help` appends --help).
    result = subprocess.run(
        [str(ROOT / argv[0]), *argv[1:], "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.startswith("Usage: ")


def test_every_package_script_names_an_executable_in_the_repository() -> None:
    for name, command in scripts().items():
        program = shlex.split(command)[0]
        assert os.access(ROOT / program, os.X_OK), (name, program)


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Run the tests", 1)[1]
    command = section.split("```sh\n", 1)[1].split("\n```", 1)[0].strip()
    assert command == "scripts/test"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    last = [line for line in ci if line.strip() and not line.startswith("#")][-1]
    assert last == command
    assert "apt-get install -y -qq shellcheck zip" in "\n".join(ci)


def test_the_test_command_reuses_or_rebuilds_an_existing_venv() -> None:
    text = (ROOT / "scripts" / "test").read_text()
    shared = (ROOT / "scripts" / "lib" / "venv.sh").read_text()
    assert ". scripts/lib/venv.sh" in text and "ensure_project_venv" in text
    assert "python3 -m venv --clear" in shared  # a broken .venv is rebuilt, a working one kept
    # two xdist workers by default, the caller's arguments after them (a later -n wins)
    assert 'exec .venv/bin/python -m pytest -n 2 "$@"' in text
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    assert any(req.startswith("pytest-xdist") for req in test_extra)
    # the no-Docker stack sets itself up the same way
    stack = (ROOT / "scripts" / "local-stack").read_text()
    assert ". scripts/lib/venv.sh" in stack and "ensure_project_venv" in stack
    assert 'exec .venv/bin/central-llm-local-stack "$@"' in stack
