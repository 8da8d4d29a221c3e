"""Decode audit objects (DESIGN.md, wire contract 2) into records, one per line, streamed.

Two kinds of object, told apart by the key's suffix:

- `<prefix>/YYYY/MM/DD/<batch id>.ndjson.gz`: gzip'd UTF-8, one JSON object per
  line, every line ending in `\\n`. Line numbers are 0-based positions in the
  decompressed text; blank lines are skipped, keeping the numbering.
- `<prefix>/YYYY/MM/DD/<requestId>.json`: one JSON object; its line is 0.

Invariants:

- Every line is decoded on its own: a line that is not a JSON object (invalid
  UTF-8 or JSON, another JSON type, nested too deep, longer than
  `max_line_bytes`) is a `DecodedLine` with a reason and no record, so one
  poisoned line never hides the others. Only the object as a whole can fail:
  `UnreadableObject` (broken gzip) and `ObjectTooLarge` (`lines.py`).
- Lines are yielded one at a time; nothing holds the object's records at once.
- Any JSON number is accepted and kept exactly: floats as `Decimal`, integers
  as `int` (as `Decimal` beyond Python's int-parsing digit limit), `NaN` and
  `±Infinity` as Decimal's own; a float whose exponent exceeds what `Decimal`
  can hold becomes `±Infinity` or `±0`. `items.py` decides what DynamoDB gets.
- Error texts name the position or the kind, never the content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from llm_audit.lines import ObjectTooLarge, UnreadableObject, content, split_lines

BATCH_SUFFIX = ".ndjson.gz"
SINGLE_SUFFIX = ".json"
DEFAULT_MAX_OBJECT_BYTES = 128 << 20
DEFAULT_MAX_LINE_BYTES = 8 << 20
JSON_KINDS = {list: "array", str: "string", bool: "boolean", type(None): "null"}

__all__ = ["DecodedLine", "Limits", "ObjectTooLarge", "UnreadableObject", "decode_lines"]


@dataclass(frozen=True)
class Limits:
    """How much of an object, and of one line, the ingestion will hold (from the environment)."""

    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


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


def json_number(text: str) -> Decimal:
    """A JSON float, exactly; an exponent beyond Decimal's range keeps only its direction."""
    try:
        return Decimal(text)
    except InvalidOperation:
        mantissa, _, exponent = text.lower().partition("e")
        sign = "-" if mantissa.startswith("-") else ""
        return Decimal(f"{sign}0" if exponent.startswith("-") else f"{sign}Infinity")


def _json_constant(name: str) -> Decimal:
    return Decimal(name)  # "NaN", "Infinity", "-Infinity"


def parse_record(data: bytes) -> dict[str, Any]:
    """One JSON object from UTF-8 bytes; ValueError (with a position or kind) otherwise."""
    text = data.decode("utf-8")
    options: dict[str, Any] = {"parse_float": json_number, "parse_constant": _json_constant}
    try:
        value = json.loads(text, **options)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer longer than int() parses (4300 digits)
        value = json.loads(text, parse_int=Decimal, **options)
    if not isinstance(value, dict):
        kind = JSON_KINDS.get(type(value), "number")
        raise ValueError(f"line holds a JSON {kind}, not an object")
    return value


def decode_line(number: int, data: bytes) -> DecodedLine:
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


def decode_lines(key: str, chunks: Iterable[bytes], limits: Limits) -> Iterator[DecodedLine]:
    """Every non-blank line of an audit object, decoded, as the chunks arrive.

    Raises UnreadableObject (ObjectTooLarge included) while iterating.
    """
    whole = key.endswith(SINGLE_SUFFIX)
    if not whole and not key.endswith(BATCH_SUFFIX):
        raise UnreadableObject("key is neither a batch (.ndjson.gz) nor a record (.json)")
    blocks = content(chunks, not whole, limits.max_object_bytes)
    too_long = f"longer than {limits.max_line_bytes} bytes (MAX_LINE_BYTES)"
    if whole:
        yield _whole_object(blocks, limits.max_line_bytes, too_long)
        return
    for number, data in split_lines(blocks, limits.max_line_bytes):
        if data is None:
            yield DecodedLine(number, None, f"line {too_long}")
        elif data.strip():
            yield decode_line(number, data)


def _whole_object(blocks: Iterable[bytes], max_bytes: int, too_long: str) -> DecodedLine:
    """A single-record object (newlines and all) as line 0."""
    held: list[bytes] = []
    size = 0
    for block in blocks:
        size += len(block)
        if size > max_bytes:
            return DecodedLine(0, None, f"record {too_long}")
        held.append(block)
    return decode_line(0, b"".join(held))


def decode_object(key: str, body: bytes, limits: Limits | None = None) -> list[DecodedLine]:
    """Every line of an object already in memory (small objects, tests); raises UnreadableObject."""
    return list(decode_lines(key, [body], limits or Limits()))


def record_at(key: str, body: bytes, line: int) -> dict[str, Any]:
    """The record on one line of an object (for looking a request up); KeyError if absent."""
    for decoded in decode_lines(key, [body], Limits()):
        if decoded.line == line and decoded.record is not None:
            return decoded.record
        if decoded.line >= line:
            break
    raise KeyError(f"{key} has no record on line {line}")
