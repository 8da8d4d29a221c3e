"""S3 down for a while under load, then back: nothing lost, clients served as usual.

Real processes on loopback: the sidecar, the vLLM stand-in, moto's S3 server,
with a cuttable TCP path between the sidecar and S3. "Client latency
unchanged" is shown without timing anything: every request sent while the
shipper was failing (put errors rising, nothing shipped) got its full answer,
and `/health` stayed 200 (an S3 outage never takes the task out of service;
test_operator_view.py holds one past every threshold).
"""

from __future__ import annotations

import asyncio
import statistics

from tests.faults.load import Answer, run_load
from tests.faults.observe import health, log_objects, scrape, wait_for
from tests.faults.reconcile import assert_exactly_once, report, wait_reconciled
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import StartSidecar
from tests.standin_fixture import Standin

PUT_ERRORS = "llm_audit_s3_put_errors_total"
SHIPPED = "llm_audit_records_shipped_total"
SLOWER_STREAMS = {"x-standin-itl-ms": "20"}


async def test_s3_down_under_load_then_back_loses_nothing(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(
        standin_session.url, AWS_ENDPOINT_URL=s3_cut.url, AUDIT_BATCH_MAX_RECORDS="10"
    )
    before = await run_load(sidecar.url, 30, 30, "s3up", headers=SLOWER_STREAMS)

    s3_cut.cut()
    opening = await run_load(sidecar.url, 6, 6, "s3cut")
    failing = await asyncio.to_thread(
        wait_for,
        lambda: scrape(sidecar.metrics_url),
        lambda s: s.value(PUT_ERRORS) > 0,
        "a failed S3 put after the cut",
    )
    # Streams of ~0.3 s each, four waves: the outage lasts a few seconds, several
    # batches are sealed and fail to ship meanwhile.
    during = await run_load(sidecar.url, 120, 30, "s3down", headers=SLOWER_STREAMS)
    still_failing = scrape(sidecar.metrics_url)
    status, body = health(sidecar.url)

    # The whole load ran while the shipper was failing: nothing shipped, more errors.
    assert still_failing.value(SHIPPED) == failing.value(SHIPPED)
    assert still_failing.value(PUT_ERRORS) > failing.value(PUT_ERRORS)
    assert still_failing.value("llm_audit_spool_bytes") > 0
    assert s3_cut.resets > 0
    # ... and every client was served in full.
    for load in (before, opening, during):
        assert [a.status for a in load.answers] == [200] * load.count, [
            a.error for a in load.answers if a.status != 200
        ]
    assert status == 200, body

    s3_cut.restore()
    answered = {a.request_id for load in (before, opening, during) for a in load.answered()}
    result = await asyncio.to_thread(wait_reconciled, sidecar.moto_url, sidecar.bucket, answered)
    after = scrape(sidecar.metrics_url)
    report(
        "s3-outage",
        result,
        sent_during_outage=len(opening.answers) + len(during.answers),
        put_errors=int(after.value(PUT_ERRORS)),
        resets=s3_cut.resets,
        p50_client_ms_before=_p50_ms(before.answers),
        p50_client_ms_during=_p50_ms(during.answers),
    )
    assert_exactly_once(result)
    log_objects(sidecar.all_log_lines())


def _p50_ms(answers: list[Answer]) -> str:
    """Informational only (printed, never asserted): the clients' median latency."""
    latencies = [a.latency_ms for a in answers if a.latency_ms is not None]
    return f"{statistics.median(latencies):.1f}" if latencies else "n/a"
