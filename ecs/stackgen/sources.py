"""Reads the source files the template is rendered from, and says clearly what is wrong.

Paths are fixed relative to the repository root; callers may pass another root
(tests render a copy). Loaders return plain JSON data and raise `SourceError`
naming the file when it is missing or malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TASK_DEFINITION = Path("ecs/task-definition.json")
POLICIES = Path("ecs/policies")
AUDIT_TABLE = Path("lambda/audit_table.json")
TEMPLATE = Path("ecs/central-llm-stack.json")

# CreateTable request keys the template knows how to carry over.
_TABLE_KEYS = frozenset(
    {
        "TableName",
        "AttributeDefinitions",
        "KeySchema",
        "BillingMode",
        "GlobalSecondaryIndexes",
        "TimeToLiveAttribute",
    }
)


class SourceError(ValueError):
    """A source file is missing or does not have the expected shape."""


@dataclass(frozen=True)
class Sources:
    """Everything the template is rendered from."""

    task_definition: dict[str, Any]
    task_policy: dict[str, Any]
    protection_policy: dict[str, Any]
    execution_policy: dict[str, Any]
    ingest_policy: dict[str, Any]
    reader_policy: dict[str, Any]
    reconcile_policy: dict[str, Any]
    table: dict[str, Any]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: missing") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return data


def _check_table(table: dict[str, Any], path: Path) -> dict[str, Any]:
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise SourceError(
            f"{path}: keys the stack template does not carry over: {', '.join(unknown)} "
            "(teach ecs/stackgen/ingest.py about them)"
        )
    for key in ("TableName", "AttributeDefinitions", "KeySchema"):
        if key not in table:
            raise SourceError(f"{path}: {key} is required")
    return table


def load_sources(root: Path = REPO_ROOT) -> Sources:
    table_path = root / AUDIT_TABLE
    return Sources(
        task_definition=_load(root / TASK_DEFINITION),
        task_policy=_load(root / POLICIES / "ecs-task-audit-writer.json"),
        protection_policy=_load(root / POLICIES / "ecs-task-protection.json"),
        execution_policy=_load(root / POLICIES / "ecs-task-execution.json"),
        ingest_policy=_load(root / POLICIES / "llm-audit-ingest.json"),
        reader_policy=_load(root / POLICIES / "audit-reader.json"),
        reconcile_policy=_load(root / POLICIES / "audit-reconcile.json"),
        table=_check_table(_load(table_path), table_path),
    )
