"""The inference histograms and their EMF line, read from a real sidecar in front of the stand-in.

- `llm_inference_*` (TTFT, inter-token latency, end-to-end, tokens per second)
  are observed once per generating request, labelled by model (configured ids,
  else `other`), route and outcome; non-generating routes are not observed.
- Their figures agree with the stand-in's pace (TTFT >= its scheduled delay,
  ITL around its inter-token delay) and with the usage the answers carried.
- The EMF line for the alarms carries this interval's requests, errors and a
  TTFT distribution (`Values`/`Counts`) whose counts add up to the streams.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp

from tests.faults.observe import Scrape, scrape
from tests.sidecar_fixture import AUDIT_HEADERS, StartSidecar
from tests.standin_fixture import Standin

CHAT = "/v1/chat/completions"
ITL_MS = 2.0  # the session stand-in's pace (tests/standin_fixture.py)
TTFT_MS = 10.0


async def _stream(s: aiohttp.ClientSession, url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {**AUDIT_HEADERS, "x-request-id": uuid.uuid4().hex}
    async with s.post(f"{url}{CHAT}", json=body, headers=headers) as r:
        await r.read()
        return r.status


async def _traffic(url: str, model: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert await _stream(s, url, model) == 200
        # A model vLLM does not serve: 404, and its name never becomes a label value.
        assert await _stream(s, url, "no-such-model") == 404
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(f"{url}{CHAT}", json=body, headers=AUDIT_HEADERS) as r:
            assert r.status == 200
        async with s.get(f"{url}/v1/models", headers=AUDIT_HEADERS) as r:
            assert r.status == 200


def _labels(model: str) -> dict[str, str]:
    return {"model": model, "route": CHAT, "outcome": "completed"}


async def test_inference_histograms_by_model_route_and_outcome(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    sidecar = start_sidecar(standin_session.url, METRICS_MODELS=f"{model},another-model")
    await _traffic(sidecar.url, model)
    m: Scrape = scrape(sidecar.metrics_url)
    known, other = _labels(model), _labels("other")
    assert m.types["llm_inference_time_to_first_token_seconds"] == "histogram"
    # 3 streams + 1 JSON answer of the configured model; 1 refused request for another.
    assert m.value("llm_inference_e2e_latency_seconds_count", **known) == 4
    assert m.total("llm_inference_e2e_latency_seconds_count", model="other") == 1
    assert m.value("llm_inference_e2e_latency_seconds_count", **other) == 1  # relayed: completed
    assert m.value("llm_inference_time_to_first_token_seconds_count", **known) == 3
    assert m.value("llm_inference_inter_token_latency_seconds_count", **known) == 3
    assert m.value("llm_inference_output_tokens_per_second_count", **known) == 4
    # /v1/models is no inference: only the per-path histogram saw it.
    routes = {dict(ls)["route"] for ls in m.series("llm_inference_e2e_latency_seconds_count")}
    assert routes == {CHAT}
    assert m.value("llm_sidecar_request_duration_seconds_count", path="/v1/models") == 1
    ttft = m.value("llm_inference_time_to_first_token_seconds_sum", **known) / 3
    itl = m.value("llm_inference_inter_token_latency_seconds_sum", **known) / 3
    assert ttft >= TTFT_MS / 1000
    assert ITL_MS / 1000 * 0.5 <= itl <= ITL_MS / 1000 * 20, itl  # a loaded machine stretches it
    tokens = m.value("llm_sidecar_tokens_total", direction="completion")
    rate_sum = m.value("llm_inference_output_tokens_per_second_sum", **known)
    latency_sum = m.value("llm_inference_e2e_latency_seconds_sum", **known)
    assert rate_sum > 0 and tokens / latency_sum <= rate_sum  # each request's rate, summed
    # Labels are closed sets: no user, project or request id anywhere.
    for (name, labels), _ in m.samples.items():
        if name.startswith("llm_inference_"):
            assert {k for k, _ in labels} <= {"model", "route", "outcome", "le"}, name


async def test_emf_line_carries_requests_errors_and_a_ttft_distribution(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    sidecar = start_sidecar(standin_session.url, METRICS_MODELS=model, EMF_INTERVAL_S="0.5")
    await _traffic(sidecar.url, model)
    deadline = time.monotonic() + 20
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in sidecar.log_lines() if '"inference metrics"' in line]
        if sum(float(str(line["InferenceRequests"])) for line in lines) >= 5:
            break
        await asyncio.sleep(0.2)
    assert sum(float(str(line["InferenceRequests"])) for line in lines) == 5
    assert all(line["InferenceErrors"] == 0 for line in lines)  # a 404 is the client's error
    counts = 0.0
    for line in lines:
        aws = line["_aws"]
        assert isinstance(aws, dict)
        declared = [m["Name"] for m in aws["CloudWatchMetrics"][0]["Metrics"]]
        assert aws["CloudWatchMetrics"][0]["Namespace"] == "CentralLLM/Inference"
        if "TimeToFirstToken" in line:
            assert "TimeToFirstToken" in declared
            dist = line["TimeToFirstToken"]
            assert isinstance(dist, dict) and len(dist["Values"]) == len(dist["Counts"])
            assert all(v >= TTFT_MS / 1000 for v in dist["Values"])  # upper bounds
            counts += sum(dist["Counts"])
    assert counts == 3  # the three streams that produced a token


async def test_the_process_exports_its_cpu_memory_and_gc_passes(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(standin_session.url)
    await _traffic(sidecar.url, "Qwen/Qwen2.5-0.5B-Instruct")
    s = scrape(sidecar.metrics_url)
    assert s.value("process_cpu_seconds_total") > 0
    assert s.value("process_resident_memory_bytes") > 20e6
    # one series per generation; the start-up collection (workers.py) counts already
    assert s.total("python_gc_collections_total") >= 1
    assert len(s.series("python_gc_collections_total")) == 3
