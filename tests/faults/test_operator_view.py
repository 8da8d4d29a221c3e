"""The operator's view of a running sidecar: Prometheus metrics, /health, and the log lines.

- /metrics (on the metrics port) exposes every metric metrics.py defines, with
  the type it promises and values that add up after known traffic: requests by
  path/status/outcome, latency / TTFT / overhead histograms, tokens, records
  spooled and shipped, spool bytes and segments, oldest unshipped age, S3 put
  latency and errors (S3 is cut, then restored, so both sides are seen).
- /health stays 200 while S3 is unreachable past every threshold (the spool
  holds more than HEALTH_MAX_SPOOL_BYTES, shipping has lagged beyond
  HEALTH_MAX_SHIP_LAG_S): ECS would replace a failing task and reload the
  model for nothing. The body warns about both, and the warnings clear once
  S3 is back.
- Every log line of the process, through start, traffic of every kind, an S3
  outage and SIGTERM, is one JSON object; request lines carry the requestId;
  no prompt text, answer text or secret header value ever appears.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import aiohttp
import orjson

from tests.faults.load import MODEL, Answer, call, chat_body, new_id
from tests.faults.observe import Scrape, health, log_objects, scrape, wait_for
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import AUDIT_HEADERS, StartSidecar
from tests.standin_fixture import Standin

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
COUNTERS = (
    "llm_sidecar_requests",
    "llm_sidecar_tokens",
    "llm_audit_records_spooled",
    "llm_audit_records_shipped",
    "llm_audit_records_dropped",
    "llm_audit_requests_refused",
    "llm_audit_s3_objects_put",
    "llm_audit_s3_put_errors",
    "llm_audit_spool_quarantined_bytes",
)
HISTOGRAMS = (
    "llm_sidecar_request_duration_seconds",
    "llm_sidecar_time_to_first_token_seconds",
    "llm_sidecar_overhead_seconds",
    "llm_audit_s3_put_duration_seconds",
)
GAUGES = (
    "llm_sidecar_in_flight_requests",
    "llm_audit_spool_bytes",
    "llm_audit_spool_segments",
    "llm_audit_oldest_unshipped_age_seconds",
    "llm_audit_spool_failed",
)


async def _traffic(base_url: str) -> list[tuple[str, Answer]]:
    """Nine requests of every kind: (what, answer)."""
    done: list[tuple[str, Answer]] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            body = chat_body("count the ledgers", max_tokens=5)
            done.append(("chat", await call(s, base_url, new_id("op"), body=body)))
        for _ in range(2):
            body = chat_body("tell a story", stream=True, max_tokens=6)
            done.append(("stream", await call(s, base_url, new_id("op"), body=body, stream=True)))
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3}
        done.append(
            ("completion", await call(s, base_url, new_id("op"), body=body, path=COMPLETIONS))
        )
        async with s.get(f"{base_url}/v1/models", headers=AUDIT_HEADERS) as r:
            done.append(
                ("models", Answer(r.headers["x-request-id"], r.status, await r.read(), False))
            )
        done.append(("not-found", await call(s, base_url, new_id("op"), path="/metrics")))
        done.append(("no-user", await call(s, base_url, new_id("op"), headers={"x-llm-user": ""})))
    return done


def _usage(kind: str, answer: Answer) -> tuple[int, int]:
    """(prompt, completion) tokens as the client was told."""
    if kind == "stream":
        for event in answer.body.split(b"\n\n"):
            data = event.removeprefix(b"data: ").strip()
            if data and data != b"[DONE]" and (usage := orjson.loads(data).get("usage")):
                return usage["prompt_tokens"], usage["completion_tokens"]
        raise AssertionError("no usage chunk in the stream")
    usage = answer.json()["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


async def test_metrics_expose_the_documented_names_with_values_that_add_up(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, AWS_ENDPOINT_URL=s3_cut.url)
    s3_cut.cut()
    traffic = await _traffic(sidecar.url)
    statuses = {kind: a.status for kind, a in traffic}
    assert statuses == {
        "chat": 200,
        "stream": 200,
        "completion": 200,
        "models": 200,
        "not-found": 404,
        "no-user": 400,
    }
    m = await asyncio.to_thread(
        wait_for,
        lambda: scrape(sidecar.metrics_url),
        lambda s: s.value("llm_audit_s3_put_errors_total") > 0,
        "a failed put while S3 is cut",
    )
    for name in COUNTERS:
        assert m.types.get(name) == "counter", name
    for name in HISTOGRAMS:
        assert m.types.get(name) == "histogram", name
    for name in GAUGES:
        assert m.types.get(name) == "gauge", name

    requests = "llm_sidecar_requests_total"
    assert m.value(requests, path=CHAT, status="200", outcome="completed") == 5
    assert m.value(requests, path=COMPLETIONS, status="200", outcome="completed") == 1
    assert m.value(requests, path="/v1/models", status="200", outcome="completed") == 1
    assert m.value(requests, path="other", status="404", outcome="rejected") == 1
    assert m.value(requests, path=CHAT, status="400", outcome="rejected") == 1
    assert m.total(requests) == 9
    _assert_histogram(m, "llm_sidecar_request_duration_seconds", 6, path=CHAT)
    _assert_histogram(m, "llm_sidecar_request_duration_seconds", 1, path=COMPLETIONS)
    _assert_histogram(m, "llm_sidecar_time_to_first_token_seconds", 2, path=CHAT)
    assert m.value("llm_sidecar_time_to_first_token_seconds_sum", path=CHAT) < m.value(
        "llm_sidecar_request_duration_seconds_sum", path=CHAT
    )
    # The 7 that reached vLLM; the sum's precision is test_timings_are_finer_than_a_millisecond's.
    assert m.value("llm_sidecar_overhead_seconds_count") == 7
    counted = [_usage(k, a) for k, a in traffic if k in ("chat", "stream", "completion")]
    assert m.value("llm_sidecar_tokens_total", direction="prompt") == sum(p for p, _ in counted)
    assert m.value("llm_sidecar_tokens_total", direction="completion") == 3 * 5 + 2 * 6 + 3
    assert m.value("llm_sidecar_in_flight_requests") == 0

    assert m.value("llm_audit_records_spooled_total") == 9
    assert m.value("llm_audit_records_shipped_total") == 0
    assert m.value("llm_audit_spool_bytes") > 0
    assert m.value("llm_audit_spool_segments") >= 1
    assert m.value("llm_audit_oldest_unshipped_age_seconds") > 0
    errors = m.value("llm_audit_s3_put_errors_total")
    _assert_histogram(m, "llm_audit_s3_put_duration_seconds", errors, result="error")
    for quiet in ("records_dropped", "requests_refused", "spool_quarantined_bytes"):
        assert m.value(f"llm_audit_{quiet}_total") == 0, quiet
    assert m.value("llm_audit_spool_failed") == 0

    s3_cut.restore()
    after = await asyncio.to_thread(
        wait_for,
        lambda: scrape(sidecar.metrics_url),
        lambda s: s.value("llm_audit_records_shipped_total") == 9,
        "every record shipped",
    )
    assert after.value("llm_audit_spool_bytes") == 0
    assert after.value("llm_audit_spool_segments") == 0
    assert after.value("llm_audit_oldest_unshipped_age_seconds") == 0
    puts = after.value("llm_audit_s3_objects_put_total")
    assert puts >= 1
    _assert_histogram(after, "llm_audit_s3_put_duration_seconds", puts, result="ok")
    assert after.value("llm_audit_s3_put_errors_total") >= errors


async def test_timings_are_finer_than_a_millisecond(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    """Overhead, latency and TTFT need sub-ms timing: whole-ms values mean a coarse clock."""
    sidecar = start_sidecar(standin_session.url)
    traffic = await _traffic(sidecar.url)
    ids = [a.request_id for kind, a in traffic if kind in ("chat", "stream", "completion")]
    records = (await asyncio.to_thread(sidecar.wait_for_records, ids)).by_id()
    timings = [records[i]["latencyMs"] for i in ids]
    timings += [records[i]["ttftMs"] for i in ids if records[i]["ttftMs"] is not None]
    overhead_ms = scrape(sidecar.metrics_url).value("llm_sidecar_overhead_seconds_sum") * 1000
    assert not _whole_ms(overhead_ms), f"overhead sum {overhead_ms} ms"
    assert not all(_whole_ms(t) for t in timings), f"every timing is whole ms: {timings}"


def _whole_ms(value: float) -> bool:
    return abs(value - round(value)) < 1e-6


def _assert_histogram(m: Scrape, name: str, count: float, **labels: str) -> None:
    """`count` observations, a positive sum, and cumulative buckets ending at +Inf = count."""
    assert m.value(f"{name}_count", **labels) == count, (name, labels)
    assert m.value(f"{name}_sum", **labels) > 0, (name, labels)
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for ls, v in m.series(f"{name}_bucket").items()
        if set(labels.items()) <= ls
    )
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1] == (float("inf"), count), (name, buckets)


async def test_health_stays_200_with_s3_unreachable_past_every_threshold(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        AWS_ENDPOINT_URL=s3_cut.url,
        HEALTH_MAX_SPOOL_BYTES="3000",
        HEALTH_MAX_SHIP_LAG_S="1",
    )
    assert health(sidecar.url)[0] == 200
    s3_cut.cut()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert (await call(session, sidecar.url, new_id("backlog"))).status == 200

    status, body = health(sidecar.url)
    assert status == 200, body
    assert body["status"] == "ok" and body["problems"] == []
    assert body["audit"]["spoolBytes"] > 3000
    assert any(w.startswith("audit backlog") and "exceeds 3000" in w for w in body["warnings"])
    lagging = await asyncio.to_thread(
        wait_for,
        lambda: health(sidecar.url),
        lambda h: any(w.startswith("audit shipping lags") for w in h[1]["warnings"]),
        "the shipping-lag warning",
    )
    # Past both thresholds, S3 still unreachable: the task keeps serving, audited.
    assert lagging[0] == 200, lagging[1]
    assert lagging[1]["audit"]["oldestUnshippedAgeSeconds"] > 1
    assert scrape(sidecar.metrics_url).value("llm_audit_s3_put_errors_total") > 0  # S3 really gone
    async with aiohttp.ClientSession() as session:
        assert (await call(session, sidecar.url, new_id("still-served"))).status == 200
    assert health(sidecar.url)[0] == 200

    s3_cut.restore()
    healed = await asyncio.to_thread(
        wait_for,
        lambda: health(sidecar.url),
        # warnings clear below the thresholds; the spool empties a little later
        lambda h: h[1]["warnings"] == [] and h[1]["audit"]["spoolBytes"] == 0,
        "warnings gone and the spool shipped",
    )
    assert healed[0] == 200 and healed[1]["problems"] == []
    assert healed[1]["audit"]["spoolBytes"] == 0
    log_objects(sidecar.all_log_lines())


async def test_every_log_line_is_json_with_request_ids_and_no_prompts_answers_or_secrets(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        AWS_ENDPOINT_URL=s3_cut.url,
        EMF_INTERVAL_S="0.2",
        REDACT_HEADERS="x-internal-token",
        LOG_LEVEL="debug",
    )
    canary = f"CANARY{uuid.uuid4().hex}"
    prompt = f"PROMPT-{canary} please summarise the quarterly ledger"
    secrets = {
        "authorization": f"Bearer sk-AUTH-{canary}",
        "x-api-key": f"KEY-{canary}",
        "cookie": f"session=COOKIE-{canary}",
        "proxy-authorization": f"Basic PROXY-{canary}",
        "x-internal-token": f"TOKEN-{canary}",
    }
    sent: list[str] = []
    answers: list[str] = []
    async with aiohttp.ClientSession() as s:

        async def send(
            body: dict[str, Any] | bytes,
            *,
            stream: bool = False,
            path: str = CHAT,
            headers: dict[str, str] | None = None,
        ) -> Answer:
            request_id = new_id("logs")
            sent.append(request_id)
            with_secrets = {**secrets, **(headers or {})}
            return await call(
                s,
                sidecar.url,
                request_id,
                body=body,
                stream=stream,
                path=path,
                headers=with_secrets,
            )

        plain = await send(body=chat_body(prompt, max_tokens=12))
        answers.append(plain.json()["choices"][0]["message"]["content"])
        streamed = await send(body=chat_body(prompt, stream=True, max_tokens=12), stream=True)
        answers.append(_stream_text(streamed.body))
        await send(body={"model": MODEL, "prompt": prompt, "max_tokens": 10}, path=COMPLETIONS)
        await send(body=chat_body(prompt), headers={"x-llm-user": ""})  # 400
        await send(body=f'{{"broken": "{prompt}'.encode())  # vLLM's 400, passed through
        await send(body=chat_body(prompt), path="/invocations")  # 404
        s3_cut.cut()  # the shipper's warnings are log lines too
        await send(body=chat_body(prompt, max_tokens=12))
        sent.append(await _disconnect_mid_stream(s, sidecar.url, secrets, prompt))
        await asyncio.sleep(0.5)  # a few EMF intervals
        s3_cut.restore()
    assert all(len(a.split()) >= 8 for a in answers)
    await asyncio.to_thread(sidecar.wait_for_records, sent)
    assert await asyncio.to_thread(sidecar.terminate) == 0

    raw = sidecar.all_log_lines()
    lines = log_objects(raw)
    for line in lines:
        assert {"ts", "level", "logger", "event"} <= line.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["ts"]), line
    request_lines = [line for line in lines if line["event"] == "request"]
    assert sorted(line["requestId"] for line in request_lines) == sorted(sent)
    text = "\n".join(raw)
    assert canary not in text, "a prompt or a secret header value reached the logs"
    for answer in answers:
        assert answer not in text, "an answer reached the logs"
    emf = [line for line in lines if "_aws" in line]
    assert emf and emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CentralLLM/Audit"
    assert any(line["event"] == "audit upload failed; will retry" for line in lines)


def _stream_text(body: bytes) -> str:
    text = []
    for event in body.split(b"\n\n"):
        data = event.removeprefix(b"data: ").strip()
        if data and data != b"[DONE]":
            for choice in orjson.loads(data).get("choices", []):
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def _disconnect_mid_stream(
    session: aiohttp.ClientSession, base_url: str, secrets: dict[str, str], prompt: str
) -> str:
    """A client that leaves after a few events; returns its request id."""
    request_id = new_id("logs-gone")
    headers = {
        **AUDIT_HEADERS,
        **secrets,
        "x-request-id": request_id,
        "x-standin-itl-ms": "30",
        "content-type": "application/json",
    }
    body = orjson.dumps(chat_body(prompt, stream=True, max_tokens=100))
    response = await session.post(f"{base_url}{CHAT}", data=body, headers=headers)
    seen = b""
    while seen.count(b"\n\n") < 3:
        seen += await response.content.readany()
    response.close()
    return request_id
