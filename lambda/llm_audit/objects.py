"""Decode audit objects (DESIGN.md, wire contract 2) into records, one per line. Pure functions.

Two kinds of object, told apart by the key's suffix:

- `<prefix>/YYYY/MM/DD/<batch id>.ndjson.gz`: gzip'd UTF-8, one JSON object per
  line, every line ending in `\\n`. Line numbers are 0-based positions in the
  decompressed text; blank lines are skipped, keeping the numbering.
- `<prefix>/YYYY/MM/DD/<requestId>.json`: one JSON object; its line is 0.

A line that is not a JSON object is reported as a `DecodedLine` with an error
and no record, so one poisoned line never hides the others. An object whose
gzip stream is broken cannot be split into lines at all: `UnreadableObject`.
Floats are parsed as `Decimal` and NaN/Infinity are refused, so the numbers can
go to DynamoDB unchanged. Error texts name the position, never the content.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

BATCH_SUFFIX = ".ndjson.gz"
SINGLE_SUFFIX = ".json"


class UnreadableObject(ValueError):
    """The object's bytes cannot be split into lines (corrupt or truncated gzip)."""


@dataclass(frozen=True)
class DecodedLine:
    """One line of an object: a record, or the reason it is not one."""

    line: int
    record: dict[str, Any] | None
    error: str | None = None


def is_audit_key(key: str, prefix: str) -> bool:
    """True for batch and single-record objects under `<prefix>/`."""
    root = prefix.strip("/")
    under = key.startswith(f"{root}/") if root else True
    return under and key.endswith((BATCH_SUFFIX, SINGLE_SUFFIX))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_record(data: bytes) -> dict[str, Any]:
    """One JSON object from UTF-8 bytes; ValueError (with a position) otherwise."""
    value = json.loads(data.decode("utf-8"), parse_float=Decimal, parse_constant=_refuse_constant)
    if not isinstance(value, dict):
        raise ValueError(f"line holds a JSON {type(value).__name__}, not an object")
    return value


def _decode_line(number: int, data: bytes) -> DecodedLine:
    try:
        return DecodedLine(number, parse_record(data))
    except UnicodeDecodeError as exc:
        return DecodedLine(number, None, f"invalid UTF-8 at byte {exc.start}")
    except json.JSONDecodeError as exc:
        return DecodedLine(number, None, f"invalid JSON at column {exc.colno}: {exc.msg}")
    except ValueError as exc:
        return DecodedLine(number, None, str(exc))
    except RecursionError:
        return DecodedLine(number, None, "JSON nested too deep")


def decompress(body: bytes) -> bytes:
    try:
        return gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableObject(f"gzip stream unreadable: {type(exc).__name__}") from None


def decode_object(key: str, body: bytes) -> list[DecodedLine]:
    """Every line of an audit object, decoded; raises UnreadableObject."""
    if key.endswith(BATCH_SUFFIX):
        lines = decompress(body).split(b"\n")
        return [_decode_line(n, data) for n, data in enumerate(lines) if data.strip()]
    if key.endswith(SINGLE_SUFFIX):
        return [_decode_line(0, body)]
    raise UnreadableObject("key is neither a batch (.ndjson.gz) nor a record (.json)")


def record_at(key: str, body: bytes, line: int) -> dict[str, Any]:
    """The record on one line of an object (for looking a request up); KeyError if absent."""
    for decoded in decode_object(key, body):
        if decoded.line == line and decoded.record is not None:
            return decoded.record
    raise KeyError(f"{key} has no record on line {line}")
