"""The benchmark harness (issue 6): the audit sidecar against direct access, nginx and LiteLLM.

One run on one machine starts a vLLM stand-in upstream, then each system under
test in turn on loopback, drives the same closed-loop load through it (streaming
chat at several concurrencies, non-streaming chat) and reports requests/s, SSE
events/s, added time-to-first-token and latency versus direct, CPU per 1,000
events from /proc, peak memory and, for the sidecar, whether every request's
audit record reached S3. Entry point: `scripts/benchmark` (`python -m bench`);
how to read the results: bench/README.md.
"""
