"""Spool full, under both policies: the documented behaviour, and never silent.

S3 is cut so the spool (AUDIT_SPOOL_MAX_BYTES of a few records) fills up;
then S3 comes back, shipping frees room and the sidecar accepts records again.

- `reject`: once the spool has refused a record, new requests get 503 in the
  OpenAI error shape and never reach vLLM. The request in flight when the
  spool filled up was served; its record is counted as dropped (README,
  audit_trail.py).
- `drop`: every request is served; each record the spool cannot take is
  counted as dropped.

Either way: `llm_audit_records_dropped` / `llm_audit_requests_refused` on the
metrics port, a log line naming the policy when the condition starts (and one
per dropped record, with its requestId), `/health` 503 with the detail, and a
log line when records are accepted again. Reconciling: every answered request
has exactly one record in S3, except the ones logged (and counted) as dropped,
which have none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.faults.load import Answer, call, new_id, run_load
from tests.faults.observe import (
    dropped_ids,
    health,
    log_objects,
    logged,
    scrape,
    scrape_accounted,
    wait_for,
)
from tests.faults.reconcile import assert_exactly_once, report, wait_reconciled
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import Sidecar, StartSidecar
from tests.standin_fixture import Standin, header

SPOOL_MAX_BYTES = "12000"  # about six records
FULL_SINCE = "audit record dropped: the spool cannot take records"
ACCEPTS_AGAIN = "audit spool accepts records again"
DROPPED = "llm_audit_records_dropped_total"
REFUSED = "llm_audit_requests_refused_total"


def _settings(s3_cut: TcpCut, policy: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": s3_cut.url,
        "AUDIT_SPOOL_MAX_BYTES": SPOOL_MAX_BYTES,
        "AUDIT_SPOOL_FULL_POLICY": policy,
        "AUDIT_BATCH_MAX_RECORDS": "2",
    }


async def test_spool_full_reject_policy_answers_503_and_nothing_reaches_vllm(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, **_settings(s3_cut, "reject"))
    s3_cut.cut()
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        while not answers or answers[-1].status != 503:
            assert len(answers) < 40, "the spool never filled up"
            answers.append(await call(session, sidecar.url, new_id("full-reject")))
        for _ in range(3):
            answers.append(await call(session, sidecar.url, new_id("full-reject")))
    statuses = [a.status for a in answers]
    first = statuses.index(503)
    served, refused = answers[:first], answers[first:]
    assert first >= 2 and statuses == [200] * first + [503] * len(refused), statuses
    for answer in refused:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["code"], error["type"]) == ("audit_unavailable", "service_unavailable")
        assert "audit spool full" in error["message"]
    upstream = {header(entry, "x-request-id") for entry in standin_session.requests()}
    assert {a.request_id for a in served} <= upstream
    assert not {a.request_id for a in refused} & upstream, "a refused request reached vLLM"

    metrics = await asyncio.to_thread(scrape_accounted, sidecar.metrics_url, len(answers))
    lines = sidecar.log_lines()
    dropped = dropped_ids(lines)
    assert metrics.value(REFUSED) == len(refused)
    assert metrics.value(DROPPED) == len(dropped)
    assert served[-1].request_id in dropped  # in flight when the spool filled up
    assert set(dropped) <= {a.request_id for a in answers}
    [started] = logged(lines, FULL_SINCE)
    assert started["policy"] == "reject" and "spool full" in started["reason"]
    _assert_health_shows_full(sidecar.url, len(dropped))

    s3_cut.restore()
    back = await _served_again(sidecar, "full-reject-back")
    assert logged(sidecar.log_lines(), ACCEPTS_AGAIN)
    assert scrape(sidecar.metrics_url).value(REFUSED) == len(refused)
    await _reconcile(sidecar, "spool-full[reject]", [*answers, *back], dropped, len(refused))


async def test_spool_full_drop_policy_serves_and_counts_dropped_records(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, **_settings(s3_cut, "drop"))
    s3_cut.cut()
    load = await run_load(sidecar.url, 20, 4, "full-drop")
    assert [a.status for a in load.answers] == [200] * 20  # served, full spool or not

    metrics = await asyncio.to_thread(scrape_accounted, sidecar.metrics_url, 20)
    lines = sidecar.log_lines()
    dropped = dropped_ids(lines)
    assert len(dropped) >= 5, "20 records cannot fit in a spool of about six"
    assert metrics.value(DROPPED) == len(dropped)
    assert metrics.value(REFUSED) == 0
    assert set(dropped) <= {a.request_id for a in load.answers}
    [started] = logged(lines, FULL_SINCE)
    assert started["policy"] == "drop" and "spool full" in started["reason"]
    _assert_health_shows_full(sidecar.url, len(dropped))

    s3_cut.restore()
    back = await _served_again(sidecar, "full-drop-back")
    assert logged(sidecar.log_lines(), ACCEPTS_AGAIN)
    assert scrape(sidecar.metrics_url).value(DROPPED) == len(dropped)  # nothing new dropped
    await _reconcile(sidecar, "spool-full[drop]", [*load.answers, *back], dropped, 0)


def _assert_health_shows_full(base_url: str, dropped: int) -> None:
    status, body = health(base_url)
    assert status == 503
    assert "audit spool full" in body["problems"]
    assert body["audit"]["spoolFull"] is True
    assert body["audit"]["recordsDropped"] == dropped


async def _served_again(sidecar: Sidecar, prefix: str) -> list[Answer]:
    """Once shipping has freed room, /health is 200 again and requests are audited again."""
    await asyncio.to_thread(
        wait_for, lambda: health(sidecar.url), _drained, "/health 200 and the spool empty"
    )
    back = await run_load(sidecar.url, 4, 2, prefix)
    assert [a.status for a in back.answers] == [200] * 4
    return back.answers


async def _reconcile(
    sidecar: Sidecar, name: str, answers: list[Answer], dropped: list[str], refused: int
) -> None:
    answered = {a.request_id for a in answers if a.answered}
    result = await asyncio.to_thread(
        wait_reconciled, sidecar.moto_url, sidecar.bucket, answered - set(dropped)
    )
    report(name, result, sent=len(answered), dropped=len(dropped), refused_503=refused)
    assert_exactly_once(result)  # and the dropped ones have no record at all
    log_objects(sidecar.all_log_lines())


def _drained(answer: tuple[int, dict[str, Any]]) -> bool:
    """Healthy with nothing left to ship: room is free for sure (not just one batch's worth)."""
    status, body = answer
    return status == 200 and body["audit"]["spoolBytes"] == 0
