"""JSON bodies in bounded memory: the members the proxy needs, the body as the record keeps it.

Pure functions.

A JSON body is never turned into an object tree here. Parsing
`{"a":[{},{},…]}` into Python objects costs ~25× its size (a dict per `{}`),
so a 32 MB hostile body would cost the sidecar a gigabyte. Instead:

- `top_level(body, names)` reads only the named top-level members (msgspec
  skips every other value in C without allocating it; the named ones are small
  in any request vLLM accepts, and one larger than `MAX_MEMBER_BYTES` is left
  out as if absent — unless it is an object whose own members were named as
  `nested`: then those are read the same way, so padding cannot hide them);
- `python_only_json(body)` says why Python's `json.loads` — vLLM's parser —
  might accept a body that the readers here refuse (a byte order mark,
  UTF-16/32, NaN/Infinity, a lone surrogate escape);
- `record_json(body)` validates the body (well-formed JSON, UTF-8, nesting at
  most `MAX_DEPTH`) and returns it as an `orjson.Fragment`, which the record
  encoder copies verbatim: the record holds the client's exact JSON, with no
  tree in between and nothing a decoder downstream could choke on;
- `set_member(body, name, value)` appends a top-level member; JSON parsers as
  vLLM uses them (Python's `json`, last duplicate wins) then see the new value.

Memory: each function holds at most the body plus one copy of it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import orjson

MAX_MEMBER_BYTES = 64 * 1024
# Deep enough for any real request; shallow enough for every JSON decoder that reads records.
MAX_DEPTH = 128
_VALIDATE_SLICE = 1 << 20


class _Skip(msgspec.Struct):
    """Validates a JSON object while skipping every member (no allocation)."""


_skip_object = msgspec.json.Decoder(_Skip)
_raw_array = msgspec.json.Decoder(list[msgspec.Raw])
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A top-level array is validated through one Raw per element (~50 bytes each): small ones only.
_MAX_ARRAY_BODY = 64 * 1024


def _member_decoder(names: tuple[str, ...]) -> msgspec.json.Decoder:
    # An absent member keeps the empty Raw default; `null` is Raw(b"null").
    fields = [(name, msgspec.Raw, msgspec.Raw()) for name in names]
    struct = msgspec.defstruct("Members", fields)
    return msgspec.json.Decoder(struct)


class TopLevel:
    """A reader of some top-level members of JSON objects; build once, use per request.

    `nested` names, for an object member, the members of it to read when the
    whole member is too large to decode (`{"include_usage": true, "pad": "…"}`).
    A too-large nested member that is not an object is returned as `OVERSIZED`.
    """

    def __init__(
        self, names: Iterable[str], nested: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        self.names = tuple(names)
        self._decoder = _member_decoder(self.names)
        self._nested = {name: TopLevel(inner) for name, inner in (nested or {}).items()}

    def read(self, body: bytes) -> dict[str, Any] | None:
        """The named members present in `body` (decoded), or None when it is not a JSON object."""
        if not body or body.lstrip()[:1] != b"{":
            return None
        try:
            members = self._decoder.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        out: dict[str, Any] = {}
        for name in self.names:
            raw = getattr(members, name)
            if not raw:
                continue
            if len(raw) > MAX_MEMBER_BYTES:
                inner = self._nested.get(name)
                if inner is not None:
                    value = inner.read(bytes(raw))
                    out[name] = OVERSIZED if value is None else value
                continue
            try:
                out[name] = orjson.loads(bytes(raw))
            except orjson.JSONDecodeError:  # e.g. a lone surrogate escape
                continue
        return out


OVERSIZED = "<member too large to read>"  # never a valid value of a nested (object) member
_UTF8_BOM = b"\xef\xbb\xbf"
_PYTHON_ONLY = re.compile(rb"NaN|Infinity|\\u[dD][89a-fA-F]")


def python_only_json(body: bytes) -> str | None:
    """Why `json.loads(body)` might accept what `TopLevel.read` refused, or None if it cannot.

    Python's `json.loads(bytes)` (Starlette's, hence vLLM's body parser) also
    takes a UTF-8 BOM, UTF-16/32 (`json.detect_encoding`), the literals NaN and
    ±Infinity, and surrogate escapes without their pair. An over-approximation
    meant for bodies `TopLevel.read` could not read: None means json.loads fails too.
    """
    if body.startswith(_UTF8_BOM):
        return "a UTF-8 byte order mark"
    if 0 in body[:2] or body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 or UTF-32"
    if _PYTHON_ONLY.search(body):
        return "NaN, Infinity or a lone surrogate escape"
    return None


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(data), _VALIDATE_SLICE):
            decoder.decode(view[start : start + _VALIDATE_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _depth_within(data: bytes, limit: int) -> bool:
    """True when the JSON text nests at most `limit` levels (its strings are known valid)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    # Each pass removes at least one level of every innermost pair.
    for _ in range(limit // 2):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return not brackets


def record_json(body: bytes) -> orjson.Fragment | None:
    """The body as the record's verbatim JSON, or None when it is not safe to embed as such."""
    if not body or body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        if body.lstrip()[:1] == b"{":
            _skip_object.decode(body)
        elif len(body) <= _MAX_ARRAY_BODY:
            _raw_array.decode(body)
        else:
            return None
    except (msgspec.DecodeError, RecursionError):
        return None
    if not _utf8(body) or not _depth_within(body, MAX_DEPTH):
        return None
    return orjson.Fragment(body)


def set_member(body: bytes, name: str, value: Any) -> bytes:
    """`body` (a JSON object) with `"name": value` appended as its last member."""
    close = body.rfind(b"}")
    if close < 0 or body[close + 1 :].strip():
        raise ValueError("not a JSON object")
    last = close - 1
    while last >= 0 and body[last] in b" \t\r\n":
        last -= 1
    separator = b"" if last >= 0 and body[last] == ord("{") else b","
    member = orjson.dumps(name) + b":" + orjson.dumps(value)
    # One copy of the body: join reads the memoryview in place.
    return b"".join((memoryview(body)[: last + 1], separator, member, b"}"))
