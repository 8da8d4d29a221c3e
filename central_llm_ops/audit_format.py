"""Render audit items for people (an aligned table) or programs (JSON lines). Pure functions.

Invariants: numbers come out as JSON numbers (DynamoDB's Decimals become int
or float), every JSON line is one object, and the table never breaks a row:
newlines and tabs inside cells become spaces, long cells are cut with `…`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "createdAt"),
    ("requestId", "requestId"),
    ("project", "projectId"),
    ("user", "userId"),
    ("status", "statusCode"),
    ("latencyMs", "latencyMs"),
    ("ttftMs", "ttftMs"),
    ("outcome", "outcome"),
    ("model", "model"),
    ("tokens", "totalTokens"),
)
PREVIEW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("prompt", "promptPreview"),
    ("response", "responsePreview"),
)
MAX_CELL = 48


def plain(value: Any) -> Any:
    """JSON-ready: Decimals as int or float, containers converted recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def json_line(value: Any) -> str:
    return json.dumps(plain(value), ensure_ascii=False, sort_keys=True)


def cell(item: Mapping[str, Any], attribute: str) -> str:
    value = item.get(attribute)
    if value is None:
        return "-"
    if attribute == "createdAt":
        value = str(value).split("#", 1)[0]
    text = " ".join(str(plain(value)).split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(items: Iterable[Mapping[str, Any]], previews: bool = False) -> list[str]:
    """Aligned rows with a header; `(no requests)` when there are none."""
    columns = COLUMNS + (PREVIEW_COLUMNS if previews else ())
    rows = [[cell(item, attribute) for _, attribute in columns] for item in items]
    if not rows:
        return ["(no requests)"]
    header = [title for title, _ in columns]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(columns))]
    return [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def detail(item: Mapping[str, Any], record: Mapping[str, Any] | None) -> list[str]:
    """One request: its item as `name: value` lines, then its full record as indented JSON."""
    width = max(len(name) for name in item)
    lines = [f"{name.ljust(width)}  {plain(item[name])}" for name in sorted(item)]
    lines.append("")
    if record is None:
        lines.append("record: (not available)")
    else:
        lines.append("record:")
        lines.extend(json.dumps(plain(record), ensure_ascii=False, indent=2).splitlines())
    return lines


def write_lines(lines: Sequence[str] | Iterable[str], out: Any) -> None:
    for line in lines:
        out.write(line + "\n")
