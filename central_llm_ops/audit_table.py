"""The one definition of the audit table (`lambda/audit_table.json`), for tools, tests and infra.

`lambda/audit_table.json` is CreateTable-shaped (TableName, KeySchema,
AttributeDefinitions, GlobalSecondaryIndexes with projections, BillingMode)
plus one key that CreateTable does not take, `TimeToLiveAttribute`. Everything
that creates or describes the table reads it through this module, so the
tests, the local stack and the infrastructure code cannot drift apart.

Where the file is found: in a source checkout or an editable install, next to
the sources (`<repo>/lambda/`); in a regular install, under the environment's
data directory (`share/central-llm/`, from pyproject's `data-files`).
"""

from __future__ import annotations

import copy
import json
import site
import sys
from pathlib import Path
from typing import Any

FILE_NAME = "audit_table.json"
TTL_KEY = "TimeToLiveAttribute"


def definition_path() -> Path:
    """The table definition's file; FileNotFoundError naming every place looked at."""
    candidates = [
        Path(__file__).resolve().parent.parent / "lambda" / FILE_NAME,
        Path(sys.prefix) / "share" / "central-llm" / FILE_NAME,
        Path(site.getuserbase()) / "share" / "central-llm" / FILE_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{FILE_NAME} not found in any of {[str(c) for c in candidates]}")


def load_definition(path: Path | None = None) -> dict[str, Any]:
    """The definition as written (TimeToLiveAttribute included)."""
    data: dict[str, Any] = json.loads((path or definition_path()).read_text(encoding="utf-8"))
    return data


def create_table_kwargs(
    definition: dict[str, Any], table_name: str | None = None
) -> dict[str, Any]:
    """Arguments for DynamoDB CreateTable: the definition less its TTL key, renamed if asked."""
    kwargs = {k: copy.deepcopy(v) for k, v in definition.items() if k != TTL_KEY}
    if table_name:
        kwargs["TableName"] = table_name
    return kwargs


def ttl_attribute(definition: dict[str, Any]) -> str | None:
    value = definition.get(TTL_KEY)
    return str(value) if value else None
