"""Which request paths reach vLLM, and how a streaming request is asked for usage. Pure.

Paths are matched after percent-decoding, as vLLM's router sees them; a path
with `.`/`..` segments or a NUL is never forwarded, so no spelling of a
forbidden route (`/metrics`, `/invocations`, dev routes) slips through.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

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


def usage_options_to_send(path: str, members: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `stream_options` the sidecar sends instead of the client's, when it must ask for usage.

    `members` are the request's top-level members (json_body.TopLevel). Returns
    None when the request is not a streaming generation, already asks for
    usage, or carries a `stream_options` vLLM would refuse (left for vLLM to
    judge, untouched). The result is appended as the body's last member
    (json_body.set_member), which is the one vLLM's JSON parser keeps.
    """
    if path not in GENERATION_PATHS or members is None or members.get("stream") is not True:
        return None
    options = members.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return None
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    wanted = {**(options or {}), "include_usage": True}
    if wanted.get("continuous_usage_stats"):
        # vLLM honours continuous stats only with include_usage; the client, who did
        # not ask for usage, would not have had them, so keep them off.
        wanted["continuous_usage_stats"] = False
    return wanted
