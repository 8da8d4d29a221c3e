"""CloudWatch Logs JSON filter patterns, the subset the stack uses, evaluated on a log line.

`{ $.field = "text" && $.other > 0 }`: conjunctions of `$.name` compared with
a quoted string (`=`, `!=`) or a number (`=`, `!=`, `>`, `>=`, `<`, `<=`).
Anything else raises, so a pattern the stack grows is never silently misread.
"""

from __future__ import annotations

import operator
import re
from typing import Any

_TERM = re.compile(r'^\$\.([A-Za-z0-9_]+)\s*(=|!=|>=|<=|>|<)\s*("(?:[^"]*)"|-?\d+(?:\.\d+)?)$')
_OPS = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def matches(pattern: str, line: dict[str, Any]) -> bool:
    body = pattern.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"not a JSON filter pattern: {pattern!r}")
    for term in body[1:-1].split("&&"):
        match = _TERM.match(term.strip())
        if match is None:
            raise ValueError(f"unsupported term {term.strip()!r} in {pattern!r}")
        field, op, raw = match.groups()
        if field not in line:
            return False
        expected: Any = raw[1:-1] if raw.startswith('"') else float(raw)
        value = line[field]
        if not isinstance(expected, str) and not isinstance(value, int | float):
            return False
        if not _OPS[op](value, expected):
            return False
    return True


def metric_value(selector: str, line: dict[str, Any]) -> float:
    """The value a metric transformation takes from a line (`$.field`)."""
    assert selector.startswith("$."), selector
    return float(line[selector[2:]])
