"""Which paths reach vLLM; how vLLM reads a request's `stream`, `n` and usage options. Pure.

Routes: the default allowlist is vLLM 0.33's client-facing route table
(`vllm_routes.json`, extracted from the release wheel by
`vllm_engine/extract_routes.py`): `CLIENT_PATHS` always, `POOLING_PATHS` only when
configured. A pattern is an exact path, a prefix ending in `*`, or a path whose
`{name}` segments match any one non-empty segment. Paths are matched after
percent-decoding, as vLLM's router sees them; a path with `.`/`..` segments or a
control character is never forwarded, so no spelling of a forbidden route (`/metrics`,
`/v1/load_lora_adapter`, dev routes) slips through. The engine's admin routes
(`NEVER_FORWARDED`) are refused even when an operator's pattern covers them, in every
spelling vLLM's server stack routes to them (`reaches_admin`).

Request fields are read the way vLLM's pydantic request models read them in lax
mode (vLLM 0.33: `stream: bool | None`, `n: int | None` (chat) / `int` (completions),
`stream_options.include_usage: bool | None`; see `vllm_standin/WIRE_FORMAT.md`):
`lax_bool` / `lax_int` return the value pydantic would produce, or `INVALID` when
pydantic would reject it (vLLM then answers 400 and nothing streams).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final
from urllib.parse import unquote

# Paths whose request models declare `stream_options` (chat and completions only:
# the Responses and Anthropic request models have no such field).
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
# Paths whose request models declare `stream` (vLLM streams them when it is true).
STREAMING_PATHS = GENERATION_PATHS | {"/v1/responses", "/v1/messages"}

# vLLM 0.33's client-facing routes (class `client` in vllm_routes.json).
CLIENT_PATHS: Final = (
    "/v1/chat/completions",
    "/v1/chat/completions/batch",
    "/v1/completions",
    "/v1/responses",
    "/v1/responses/{response_id}",
    "/v1/responses/{response_id}/cancel",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
    "/version",
)
# Routes vLLM registers only for a pooling model (class `pooling`).
POOLING_PATHS: Final = (
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v2/embed",
)


# Routes never forwarded, whatever ALLOWED_PATHS says: the engine's admin surface
# (vllm_routes.json classes `rl`, `dev`, `elastic-ep`, `sleep-wake`, `profiling`, `lora`,
# `fault-tolerance`) and scale-out's engine-wide abort. Anyone reaching them could load
# adapters, put the engine to sleep, swap weights or abort every user's requests.
NEVER_FORWARDED_CLASSES: Final = (
    "rl",
    "dev",
    "elastic-ep",
    "sleep-wake",
    "profiling",
    "lora",
    "fault-tolerance",
)
NEVER_FORWARDED: Final = frozenset(
    {
        # rl
        "/abort_requests",
        "/finish_weight_update",
        "/get_world_size",
        "/init_weight_transfer_engine",
        "/is_paused",
        "/pause",
        "/resume",
        "/shutdown_weight_transfer_engine",
        "/start_draft_weight_update",
        "/start_weight_update",
        "/update_weight_version",
        "/update_weights",
        "/weight_checker",
        "/weight_info",
        # dev
        "/collective_rpc",
        "/reset_encoder_cache",
        "/reset_mm_cache",
        "/reset_prefix_cache",
        "/server_info",
        # elastic-ep
        "/is_scaling_elastic_ep",
        "/scale_elastic_ep",
        # sleep-wake
        "/is_sleeping",
        "/release_kv_cache_memory",
        "/sleep",
        "/wake_up",
        # profiling
        "/start_profile",
        "/stop_profile",
        # lora
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        # fault-tolerance
        "/fault_tolerance/apply",
        "/fault_tolerance/status",
        # lora, as the SageMaker bootstrap vLLM runs on its app mounts its LoRA handlers
        # (model-hosting-container-standards: POST loads, DELETE unloads)
        "/adapters",
        "/adapters/{adapter_name}",
        # scale-out's abort (class scale-out; its other routes only refused by default)
        "/inference/v1/abort_requests",
    }
)


# How many segments the longest admin route has, and the admin routes with a `{name}`.
_ADMIN_DEPTH: Final = max(path.count("/") for path in NEVER_FORWARDED)
_ADMIN_TEMPLATES: Final = tuple(path.split("/") for path in NEVER_FORWARDED if "{" in path)
# Starlette matches a route's `^...$` regex with `re.match`, where `$` also matches before
# a final newline (`/sleep%0A` reaches `/sleep`); no route of vLLM's takes any control byte.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Non-client routes a `{name}` pattern above would match, with the method that reaches
# them: POST /v1/responses/render is scale-out's render route in vLLM (Starlette takes
# the first route matching path and method, and `/v1/responses/{response_id}` is GET
# only, so a GET of it is the client route). Matched for that method only by an exact
# pattern.
SHADOWED_PATHS: Final = {"/v1/responses/render": "POST"}


class _Invalid:
    """A value vLLM's request model rejects (400)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

_TRUE_WORDS = frozenset({"t", "y", "on", "yes", "true"})
_FALSE_WORDS = frozenset({"f", "n", "no", "off", "false"})
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
_MAX_INT_DIGITS = 4300  # significant digits pydantic reads from a string (Python's default too)
_FLOAT_INT_LIMIT = 2.0**63  # pydantic refuses an integral float this large (int_parsing_size)


def path_allowed(raw_path: str, patterns: tuple[str, ...], method: str | None = None) -> bool:
    """Whether a request target may be forwarded; `method` None: as for any method."""
    if method == "CONNECT":
        # Its target is an authority, not a path: uvicorn reads `CONNECT /v1/models` as
        # the empty path. No route of vLLM's takes a CONNECT.
        return False
    # The query and a fragment go first: vLLM's server (uvicorn's URL parser) drops both.
    path = unquote(raw_path.split("?", 1)[0].split("#", 1)[0])
    if _CONTROL.search(path) or not path.startswith("/"):
        return False
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments) or _admin_tail(segments):
        return False
    shadowing = SHADOWED_PATHS.get(path)
    shadowed = shadowing is not None and method in (None, shadowing)
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif "{" in pattern:
            if not shadowed and _segments_match(pattern.split("/"), segments):
                return True
        elif path == pattern:
            return True
    return False


def reaches_admin(path: str) -> bool:
    """True when vLLM's router could take this (decoded) path to one of its admin routes."""
    return _admin_tail(path.split("/"))


def _admin_tail(segments: list[str]) -> bool:
    # The path, and every tail of it: FastAPI strips vLLM's `--root-path R` before Starlette
    # routes, so `R/sleep` reaches `/sleep` (and `/sleep` still does), whatever R is.
    for depth in range(1, min(_ADMIN_DEPTH, len(segments) - 1) + 1):
        tail = ["", *segments[-depth:]]
        if "/".join(tail) in NEVER_FORWARDED:
            return True
        if any(_segments_match(template, tail) for template in _ADMIN_TEMPLATES):
            return True
    return False


def _segments_match(pattern: list[str], segments: list[str]) -> bool:
    if len(pattern) != len(segments):
        return False
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return False
        elif want != got:
            return False
    return True


def lax_bool(value: Any) -> bool | _Invalid | None:
    """`bool | None` as pydantic v2 validates a JSON value in lax mode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else INVALID
    if isinstance(value, float):
        return bool(value) if value in (0.0, 1.0) else INVALID
    if isinstance(value, str):
        if value == "1":
            return True
        if value == "0":
            return False
        word = value.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return INVALID


def lax_int(value: Any) -> int | _Invalid | None:
    """`int | None` as pydantic v2 validates a JSON value in lax mode."""
    if value is None or isinstance(value, int):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < _FLOAT_INT_LIMIT:
            return int(value)
        return INVALID
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            digits = text.lstrip("+-").split(".", 1)[0].replace("_", "").lstrip("0") or "0"
            if len(digits) <= _MAX_INT_DIGITS:  # past it pydantic refuses (and int() raises)
                return -int(digits) if text.startswith("-") else int(digits)
    return INVALID


def will_stream(path: str, body: dict[str, Any] | None) -> bool:
    """True when vLLM will answer this request with an event stream."""
    if path not in STREAMING_PATHS or body is None:
        return False
    return lax_bool(body.get("stream")) is True


def usage_requested(body: dict[str, Any]) -> bool | _Invalid:
    """Whether `stream_options.include_usage` asks for usage, as vLLM reads it.

    INVALID when vLLM rejects the options (the request then gets a 400).
    """
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        return INVALID
    include = lax_bool(options.get("include_usage"))
    if include is INVALID or lax_bool(options.get("continuous_usage_stats")) is INVALID:
        return INVALID
    return include is True


def requested_n(path: str, body: dict[str, Any] | None) -> int | None:
    """The number of choices vLLM will generate per prompt, or None when it rejects `n`."""
    if body is None:
        return 1
    if "n" not in body:
        return 1
    n = lax_int(body["n"])
    if n is None:
        return 1 if path != "/v1/completions" else None  # completions: `n: int`
    return None if n is INVALID else n  # type: ignore[return-value]


def usage_options_to_send(path: str, members: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `stream_options` the sidecar sends instead of the client's, when it must ask for usage.

    `members` are the request's top-level members (json_body.TopLevel). Added to
    every request vLLM will stream on a path whose model has `stream_options`
    (`stream` true in any spelling vLLM accepts), unless the client already asks
    for usage in any accepted spelling. None — the body is forwarded as received
    — when no change is needed or when vLLM will reject the options anyway (its
    400 must be the client's). The result is appended as the body's last member
    (json_body.set_member), the one vLLM's JSON parser keeps.
    """
    if path not in GENERATION_PATHS or not will_stream(path, members):
        return None
    assert members is not None
    if usage_requested(members) is not False:  # asked (kept as sent), or invalid (vLLM's 400)
        return None
    options = members.get("stream_options")
    wanted = {**(options or {}), "include_usage": True}
    if lax_bool(wanted.get("continuous_usage_stats")):
        # vLLM honours continuous stats only with include_usage; the client, who did
        # not ask for usage, would not have had them, so keep them off.
        wanted["continuous_usage_stats"] = False
    return wanted
