"""The state one running stand-in shares between handlers, and the keys to reach it.

Invariants: one `Runtime` per application, created by `build_app` and reached only
through `RUNTIME`; the journal entry of the current request through `ENTRY`. No module
holds mutable state of its own.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from vllm_standin.bodies import Limits
from vllm_standin.journal import Entry, Journal
from vllm_standin.options import StandinOptions


@dataclass(frozen=True, slots=True)
class Runtime:
    options: StandinOptions
    journal: Journal
    limits: Limits
    fingerprint: str

    @classmethod
    def create(cls, options: StandinOptions) -> Runtime:
        digest = hashlib.sha256(f"{options.model}\x00{options.max_model_len}".encode()).hexdigest()
        return cls(
            options=options,
            journal=Journal(options.journal_size),
            limits=Limits(options.model, options.max_model_len, options.enable_force_include_usage),
            fingerprint=f"vllm-{options.vllm_version}-{digest[:8]}",
        )


RUNTIME = web.AppKey("standin_runtime", Runtime)
ENTRY = web.RequestKey("standin_entry", Entry)


def base_request_id(request: web.Request, body_id: str | None = None) -> str:
    """vLLM's `_base_request_id`: the X-Request-Id header verbatim, else the body's
    `request_id` (chat and completion requests), else 16 random hex (`random_uuid()`)."""
    header = request.headers.get("X-Request-Id")
    if header is not None:
        return header
    return body_id if body_id is not None else secrets.token_hex(8)


def created_now(pinned: int | None) -> int:
    return int(time.time()) if pinned is None else pinned
