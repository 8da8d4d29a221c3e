"""Pure helpers that turn API-shaped JSON into CloudFormation-shaped JSON.

The ECS API (and so `task-definition.json`) spells keys in camelCase;
CloudFormation spells the same keys in PascalCase. Free-form maps (log driver
options, Docker labels, driver options) keep their keys as written. Strings
holding `${...}` placeholders become `Fn::Sub` so one file serves both the
template and a reader who knows CloudFormation's substitution syntax.
"""

from __future__ import annotations

import re
from typing import Any

Json = Any

# Keys whose values are free-form maps: their own keys are data, not field names.
_FREE_FORM_MAPS = frozenset({"options", "dockerLabels", "driverOpts", "labels"})
_PLACEHOLDER = re.compile(r"\$\{([^}!][^}]*)\}")


def pascal_keys(value: Json) -> Json:
    """Copy of `value` with every field name capitalised (camelCase -> PascalCase)."""
    if isinstance(value, list):
        return [pascal_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted: dict[str, Json] = {}
    for key, item in value.items():
        new_key = key[:1].upper() + key[1:]
        converted[new_key] = dict(item) if key in _FREE_FORM_MAPS else pascal_keys(item)
    return converted


def substitute(value: Json) -> Json:
    """Copy of `value` where each string with a `${...}` placeholder is an `Fn::Sub`."""
    if isinstance(value, list):
        return [substitute(item) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item) for key, item in value.items()}
    if isinstance(value, str) and _PLACEHOLDER.search(value):
        return {"Fn::Sub": value}
    return value


def placeholders(value: Json) -> set[str]:
    """Every `${Name}` / `${Name.Attr}` placeholder used in `Fn::Sub` strings of `value`."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= placeholders(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "Fn::Sub" and isinstance(item, str):
                found |= set(_PLACEHOLDER.findall(item))
            else:
                found |= placeholders(item)
    return found


def ref(name: str) -> Json:
    return {"Ref": name}


def get_att(resource: str, attribute: str) -> Json:
    return {"Fn::GetAtt": [resource, attribute]}


def sub(template: str) -> Json:
    return {"Fn::Sub": template}


def tags(**pairs: str) -> list[Json]:
    return [{"Key": key, "Value": value} for key, value in pairs.items()]
