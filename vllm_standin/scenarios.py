"""Per-request test controls carried by `x-standin-*` headers (real clients never send them).

`x-standin-scenario` holds one or more comma-separated names:

- `tool_calls`: the answer is two tool calls, streamed as vLLM's tool parsers do (name
  first, then argument fragments); non-streamed: `message.tool_calls`; finish
  `tool_calls`.
- `reasoning`: `reasoning` deltas (vLLM's field name) before the content;
  non-streamed: `message.reasoning`.
- `error_midstream`: after `x-standin-error-after` tokens (default 3) the error event
  vLLM sends when generation fails, then `[DONE]` (non-streamed: a 500).
- `stall_midstream`: after `x-standin-error-after` tokens the stream goes silent forever.
- `keepalive_comments`: a `: keep-alive` SSE comment before every token event after
  the first.
- `http_error`: an error response in vLLM's shape, status `x-standin-error-status`:
  400 (default; `max_tokens` above the context), 404 (an unknown model), 500
  (`GenerationError`), 501 (the API is not supported), 503 (the engine's request
  queue is full).
- `hang`: the request is read and never answered.
- `slow_first_token`: time to first token from `x-standin-ttft-ms` (default 2000 ms).
- `gzip`: a non-streamed body is gzip-compressed with `content-encoding: gzip`.

`x-standin-choice-tokens: 3,9,5` gives choice i (of every prompt) its own answer
length, so choices of one request finish at different steps as they do in vLLM;
missing entries repeat the last one.

Other headers: `x-standin-tokens`, `x-standin-itl-ms`, `x-standin-ttft-ms` override the
server's settings for this request; `x-standin-created` pins the `created` timestamp.
A malformed control is the test's bug, so it is rejected (`BadControl`), not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SCENARIOS = frozenset(
    {
        "tool_calls",
        "reasoning",
        "error_midstream",
        "stall_midstream",
        "keepalive_comments",
        "http_error",
        "hang",
        "slow_first_token",
        "gzip",
    }
)
SLOW_FIRST_TOKEN_MS = 2000.0
ERROR_STATUSES = frozenset({400, 404, 500, 501, 503})


class BadControl(ValueError):
    """An `x-standin-*` header that cannot be honoured."""


@dataclass(frozen=True, slots=True)
class Controls:
    """What the test asked of this request; `None` means "use the server setting"."""

    scenarios: frozenset[str] = frozenset()
    tokens: int | None = None
    itl_ms: float | None = None
    ttft_ms: float | None = None
    created: int | None = None
    error_status: int = 400
    error_after: int = 3
    choice_tokens: tuple[int, ...] = ()

    def has(self, name: str) -> bool:
        return name in self.scenarios


NO_CONTROLS = Controls()


def _number(headers: Mapping[str, str], name: str, kind: type[float] | type[int]) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise BadControl(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise BadControl(f"{name} must not be negative, got {raw!r}")
    return value


def _choice_tokens(raw: str | None) -> tuple[int, ...]:
    if not raw:
        return ()
    try:
        counts = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise BadControl(f"x-standin-choice-tokens must be integers, got {raw!r}") from None
    if any(count < 0 for count in counts):
        raise BadControl(f"x-standin-choice-tokens must not be negative, got {raw!r}")
    return counts


def _scenarios(raw: str | None) -> frozenset[str]:
    if not raw:
        return frozenset()
    names = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = names - SCENARIOS
    if unknown:
        raise BadControl(
            f"unknown x-standin-scenario {sorted(unknown)}; known: {sorted(SCENARIOS)}"
        )
    return names


def parse_controls(headers: Mapping[str, str]) -> Controls:
    """Controls from a case-insensitive header mapping; `BadControl` when one is malformed."""
    if not any(key.lower().startswith("x-standin-") for key in headers):
        return NO_CONTROLS
    scenarios = _scenarios(headers.get("x-standin-scenario"))
    ttft = _number(headers, "x-standin-ttft-ms", float)
    if ttft is None and "slow_first_token" in scenarios:
        ttft = SLOW_FIRST_TOKEN_MS
    status = _number(headers, "x-standin-error-status", int)
    if status is not None and status not in ERROR_STATUSES:
        raise BadControl(f"x-standin-error-status must be one of {sorted(ERROR_STATUSES)}")
    tokens = _number(headers, "x-standin-tokens", int)
    created = _number(headers, "x-standin-created", int)
    after = _number(headers, "x-standin-error-after", int)
    return Controls(
        scenarios=scenarios,
        tokens=None if tokens is None else int(tokens),
        itl_ms=_number(headers, "x-standin-itl-ms", float),
        ttft_ms=ttft,
        created=None if created is None else int(created),
        error_status=400 if status is None else int(status),
        error_after=3 if after is None else int(after),
        choice_tokens=_choice_tokens(headers.get("x-standin-choice-tokens")),
    )
