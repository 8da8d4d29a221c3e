"""A stand-in for vLLM's OpenAI-compatible server, for tests, benchmarks and local runs.

It speaks vLLM's wire format byte for byte (see WIRE_FORMAT.md): same JSON keys and
order, same SSE framing, same error shapes, same keep-alive timeout; the "model" is a
deterministic word generator paced by a time to first token and an inter-token delay.
Test scenarios are chosen per request with `x-standin-*` headers (`scenarios.py`), and
`/_standin/requests` / `/_standin/stats` report what the server saw.

Public interface: `StandinOptions`, `build_app(options)`, `running_standin(options)`
(async context manager yielding `.url`), and `python -m vllm_standin`.
"""

from vllm_standin.app import build_app
from vllm_standin.options import StandinOptions
from vllm_standin.server import RunningStandin, running_standin

__all__ = ["RunningStandin", "StandinOptions", "build_app", "running_standin"]
