"""Stand-in settings: one frozen value, read from the command line over the environment.

Invariants: every setting has a CLI flag and an environment variable (named below);
a CLI flag wins over the environment, the environment over the default. The idle
keep-alive timeout reads vLLM's own variable, `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, and
defaults to vLLM's 5 s.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
VLLM_VERSION = "0.33.0"


@dataclass(frozen=True, slots=True)
class StandinOptions:
    """How the stand-in behaves; every field maps to `--flag` and `ENV` (see `_SPECS`)."""

    host: str = "127.0.0.1"
    port: int = 8001
    model: str = DEFAULT_MODEL
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    tokens: int = 16
    keepalive_s: float = 5.0
    enable_request_id_headers: bool = False
    max_model_len: int = 32768
    journal_size: int = 1000
    vllm_version: str = VLLM_VERSION
    loop: str = "auto"
    enable_force_include_usage: bool = False
    sse_keep_alive_interval: float = 0.0

    def __post_init__(self) -> None:
        if min(self.tokens, self.ttft_ms, self.itl_ms, self.keepalive_s) < 0:
            raise ValueError("tokens, ttft_ms, itl_ms and keepalive_s must not be negative")
        if self.sse_keep_alive_interval < 0:
            raise ValueError("sse_keep_alive_interval must not be negative (0: off)")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"loop must be auto, asyncio or uvloop, not {self.loop!r}")


@dataclass(frozen=True, slots=True)
class _Spec:
    field: str
    flags: tuple[str, ...]
    env: str
    help: str


_SPECS: tuple[_Spec, ...] = (
    _Spec("host", ("--host",), "STANDIN_HOST", "address to bind"),
    _Spec("port", ("--port",), "STANDIN_PORT", "port to bind (0: any free port)"),
    _Spec(
        "model",
        ("--model", "--served-model-name"),
        "STANDIN_MODEL",
        "served model name",
    ),
    _Spec("ttft_ms", ("--ttft-ms",), "STANDIN_TTFT_MS", "delay before the first token"),
    _Spec("itl_ms", ("--itl-ms",), "STANDIN_ITL_MS", "delay between tokens"),
    _Spec("tokens", ("--tokens",), "STANDIN_TOKENS", "answer length in word tokens"),
    _Spec(
        "keepalive_s",
        ("--timeout-keep-alive",),
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
        "seconds before an idle keep-alive connection is closed",
    ),
    _Spec(
        "enable_request_id_headers",
        ("--enable-request-id-headers",),
        "STANDIN_ENABLE_REQUEST_ID_HEADERS",
        "echo X-Request-Id on responses, like vLLM's flag of the same name",
    ),
    _Spec("max_model_len", ("--max-model-len",), "STANDIN_MAX_MODEL_LEN", "context length"),
    _Spec(
        "journal_size",
        ("--journal-size",),
        "STANDIN_JOURNAL_SIZE",
        "requests kept for /_standin/requests (0: keep none)",
    ),
    _Spec("vllm_version", ("--vllm-version",), "STANDIN_VLLM_VERSION", "version to report"),
    _Spec("loop", ("--loop",), "STANDIN_LOOP", "event loop: auto, asyncio or uvloop"),
    _Spec(
        "enable_force_include_usage",
        ("--enable-force-include-usage",),
        "STANDIN_ENABLE_FORCE_INCLUDE_USAGE",
        "usage (and continuous usage) on every chat/completion stream, like vLLM's flag",
    ),
    _Spec(
        "sse_keep_alive_interval",
        ("--sse-keep-alive-interval",),
        "STANDIN_SSE_KEEP_ALIVE_INTERVAL",
        "seconds of idle stream before a ': keep-alive' comment (0: off; vLLM takes an "
        "int, fractions are allowed here so tests stay fast)",
    ),
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _field_types() -> dict[str, type]:
    return {f.name: type(getattr(StandinOptions(), f.name)) for f in fields(StandinOptions)}


def _convert(kind: type, raw: str, name: str) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    return kind(raw)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_standin",
        description="A stand-in for vLLM's OpenAI server, for tests and benchmarks.",
    )
    types = _field_types()
    for spec in _SPECS:
        helptext = f"{spec.help} (env {spec.env})"
        if types[spec.field] is bool:
            parser.add_argument(
                *spec.flags, dest=spec.field, action="store_const", const="true", help=helptext
            )
        else:
            parser.add_argument(*spec.flags, dest=spec.field, help=helptext)
    return parser


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> StandinOptions:
    """Options from `argv` (without the program name) over `environ` over the defaults."""
    parsed = vars(_parser().parse_args(list(argv)))
    types = _field_types()
    values: dict[str, object] = {}
    for spec in _SPECS:
        raw = parsed.get(spec.field)
        if raw is None:
            raw = environ.get(spec.env)
        if raw is not None:
            values[spec.field] = _convert(types[spec.field], raw, spec.env)
    return StandinOptions(**values)  # type: ignore[arg-type]
