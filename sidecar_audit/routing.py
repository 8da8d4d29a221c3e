"""Which request paths reach vLLM, and how a streaming request is asked for usage. Pure.

Paths are matched after percent-decoding, as vLLM's router sees them; a path
with `.`/`..` segments or a NUL is never forwarded, so no spelling of a
forbidden route (`/metrics`, `/invocations`, dev routes) slips through.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def path_allowed(raw_path: str, patterns: tuple[str, ...]) -> bool:
    path = unquote(raw_path.split("?", 1)[0])
    if "\x00" in path or not path.startswith("/"):
        return False
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is anything else."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def with_usage_requested(path: str, body: dict[str, Any] | None) -> bytes | None:
    """The body re-encoded with `stream_options.include_usage` on, when the sidecar must add it.

    Returns None when the request is not a streaming generation, already asks
    for usage, or cannot be re-encoded faithfully; the body is then forwarded
    as received.
    """
    if path not in GENERATION_PATHS or body is None or body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return None  # let vLLM judge a malformed value, untouched
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    wanted = {**(options or {}), "include_usage": True}
    if wanted.get("continuous_usage_stats"):
        # vLLM honours continuous stats only with include_usage; the client, who did
        # not ask for usage, would not have had them, so keep them off.
        wanted["continuous_usage_stats"] = False
    changed = {**body, "stream_options": wanted}
    try:
        return orjson.dumps(changed)
    except (TypeError, orjson.JSONEncodeError):
        return None
