"""SIGKILL of the sidecar under load, restart on the same spool: nothing lost.

Two shapes of what a crash leaves behind:

- `one-open-segment`: batches far larger than the load and a long flush
  interval, so at the kill every record is in one `.open` segment whose writer
  died, and S3 is still empty. Everything rests on the next process adopting it.
- `uploads-in-flight`: tiny batches shipped continuously to a slow S3 (every
  answer held back 50 ms by the TCP path), so the kill lands with uploads in
  flight, between appends, seals, puts and deletes; segments S3 already holds
  but the dead process had not deleted are uploaded again to the same key.

Requests in flight at the kill get no answer; they may or may not have a
record (the rule is about answered requests), but none may be invented.

The proxy appends a request's record before the bytes that complete its
answer leave (proxy.py), so no kill can leave a client holding a whole answer
without a record; the last test aims kills at exactly that instant. The load
tests also keep apart the spool's own guarantee: a record the dead process
accepted (its `request` log line is written after the append) must never be
lost; a missing record without one is counted as `lost_before_accept`, and
there may be none (`LOST_BEFORE_ACCEPT_MAX`).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.audit_s3 import read_audit
from tests.faults.load import Load, call, chat_body, new_id, run_load
from tests.faults.observe import dropped_ids, log_objects, logged, scrape, wait_for
from tests.faults.reconcile import assert_exactly_once, reconcile, report
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import Sidecar, StartSidecar
from tests.standin_fixture import Standin

SHAPES = {
    "one-open-segment": {"AUDIT_BATCH_MAX_RECORDS": "1000", "AUDIT_FLUSH_INTERVAL_S": "60"},
    "uploads-in-flight": {"AUDIT_BATCH_MAX_RECORDS": "3", "AUDIT_FLUSH_INTERVAL_S": "0.2"},
}
ANSWERED_BEFORE_KILL = 40
SLOW_S3_S = 0.05
LOST_BEFORE_ACCEPT_MAX = 0  # the record is spooled before an answer's last bytes leave


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_sigkill_under_load_then_restart_on_the_same_spool_loses_nothing(
    shape: str, standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, AWS_ENDPOINT_URL=s3_cut.url, **SHAPES[shape])
    s3_cut.delay_s = SLOW_S3_S if shape == "uploads-in-flight" else 0.0
    load = Load(sidecar.url, 400, 20, f"kill-{shape}", headers={"x-standin-itl-ms": "10"})
    running = asyncio.create_task(load.run())
    await load.wait_answered(ANSWERED_BEFORE_KILL)
    sidecar.kill()
    load.stop.set()
    await running
    left = sorted(p.name for p in sidecar.spool_dir.iterdir() if p.suffix in (".open", ".seg"))
    unanswered = {a.request_id for a in load.answers if not a.answered}
    assert unanswered, "the kill should have caught requests in flight"
    if shape == "one-open-segment":
        assert [name.endswith(".open") for name in left] == [True], left
        assert not sidecar.audit().keys, "nothing may have shipped before the kill"

    s3_cut.delay_s = 0.0
    sidecar.restart(AUDIT_FLUSH_INTERVAL_S="0.3")
    after = await run_load(sidecar.url, 10, 5, f"kill-{shape}-after")
    assert [a.status for a in after.answers] == [200] * 10  # the new process serves

    [recovered] = logged(sidecar.log_lines(), "audit spool recovered")
    await _spool_shipped(sidecar, recovered["records"] + len(after.answers))
    answered = {a.request_id for a in [*load.answers, *after.answers] if a.answered}
    result = reconcile(read_audit(sidecar.moto_url, sidecar.bucket).raw, answered, unanswered)
    killed_log = sidecar.earlier[-1].log().splitlines()
    assert not dropped_ids(killed_log)
    accepted = {line["requestId"] for line in logged(killed_log, "request")}
    lost_before_accept = result.missing - accepted
    report(
        f"sigkill[{shape}]",
        result,
        answered_before_kill=len(load.answered()),
        in_flight_at_kill=len(unanswered),
        segments_left_by_the_crash=len(left),
        adopted=recovered["adoptedSegments"],
        recovered_records=recovered["records"],
        lost_before_accept=len(lost_before_accept),
    )
    assert not result.invented, f"records nobody was answered for: {sorted(result.invented)}"
    assert not result.missing & accepted, "records the spool had accepted were lost"
    assert lost_before_accept <= {a.request_id for a in load.answered()}
    assert len(lost_before_accept) <= LOST_BEFORE_ACCEPT_MAX, sorted(lost_before_accept)
    if shape == "one-open-segment":
        assert recovered["adoptedSegments"] == 1
        assert recovered["records"] >= len(load.answered()) - len(lost_before_accept)
    log_objects(sidecar.all_log_lines())


async def _spool_shipped(sidecar: Sidecar, records: int) -> None:
    """Until the restarted process has shipped `records` and its spool is empty."""
    await asyncio.to_thread(
        wait_for,
        lambda: scrape(sidecar.metrics_url),
        lambda m: (
            m.value("llm_audit_records_shipped_total") >= records
            and m.value("llm_audit_spool_segments") == 0
        ),
        f"{records} records shipped by the restarted process",
    )


BIG_ANSWER = {"x-standin-itl-ms": "0", "x-standin-ttft-ms": "0", "x-standin-tokens": "30000"}
KILLS_RIGHT_AFTER_AN_ANSWER = 8


async def test_a_request_answered_just_before_a_sigkill_has_its_record(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    """Kill the sidecar the moment a client holds a whole (large, streamed) answer.

    Background load keeps the event loop busy and the large record makes the
    work after the last byte (build, encode, write a 200 KB frame) long, so a
    record appended only after the last byte is lost in some of the kills.
    """
    sidecar = start_sidecar(standin_session.url, AUDIT_FLUSH_INTERVAL_S="60")
    answered: set[str] = set()
    unanswered: set[str] = set()
    for kill in range(KILLS_RIGHT_AFTER_AN_ANSWER):
        load = Load(sidecar.url, 1000, 16, f"busy{kill}", headers={"x-standin-itl-ms": "1"})
        running = asyncio.create_task(load.run())
        await load.wait_answered(20)
        request_id = new_id(f"answered-then-killed-{kill}")
        body = chat_body("a very long answer", stream=True, max_tokens=30000)
        async with aiohttp.ClientSession() as session:
            big = await call(session, sidecar.url, request_id, body=body, headers=BIG_ANSWER)
            sidecar.kill()
        load.stop.set()
        await running
        assert big.answered, big.error
        answered.add(request_id)
        answered.update(a.request_id for a in load.answers if a.answered)
        unanswered.update(a.request_id for a in load.answers if not a.answered)
        sidecar.restart(
            AUDIT_FLUSH_INTERVAL_S="60" if kill + 1 < KILLS_RIGHT_AFTER_AN_ANSWER else "0.3"
        )
    # Everything the spool holds is shipped; what is not in S3 then is lost for good.
    [*_, recovered] = logged(sidecar.log_lines(), "audit spool recovered")
    await _spool_shipped(sidecar, recovered["records"])
    result = reconcile(read_audit(sidecar.moto_url, sidecar.bucket).raw, answered, unanswered)
    torn = sum(r["tornTails"] for r in logged(sidecar.all_log_lines(), "audit spool recovered"))
    report(
        "sigkill[right-after-an-answer]",
        result,
        kills=KILLS_RIGHT_AFTER_AN_ANSWER,
        torn_tails=torn,
        missing_ids=sorted(result.missing)[:5],
    )
    assert_exactly_once(result)
