"""Disk full on the spool volume (a tiny tmpfs): a clear error, no crash, and recovery.

The spool's own limit (AUDIT_SPOOL_MAX_BYTES, 1 GiB by default) is far above
the volume, so the first refusal is the kernel's ENOSPC. With S3 cut nothing
frees room: the spool-full policy (reject, the default) applies, and the log
says why ("disk full"). No torn frame is left behind (the write is cut back),
the process keeps answering, and once S3 is back it audits again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.faults.load import Answer, call, new_id, run_load
from tests.faults.observe import (
    dropped_ids,
    health,
    log_objects,
    logged,
    scrape_accounted,
    wait_for,
)
from tests.faults.reconcile import assert_exactly_once, report, wait_reconciled
from tests.faults.tcp_cut import TcpCut
from tests.sidecar_fixture import StartSidecar
from tests.standin_fixture import Standin

FULL_SINCE = "audit record dropped: the spool cannot take records"


async def test_disk_full_on_the_spool_volume_is_a_clear_error_not_a_crash(
    standin_session: Standin, s3_cut: TcpCut, start_sidecar: StartSidecar, tiny_tmpfs: Path
) -> None:
    sidecar = start_sidecar(
        standin_session.url,
        spool_dir=tiny_tmpfs,
        AWS_ENDPOINT_URL=s3_cut.url,
        AUDIT_BATCH_MAX_RECORDS="4",
    )
    s3_cut.cut()
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        while not answers or answers[-1].status != 503:
            assert len(answers) < 200, "the volume never filled up"
            answers.append(await call(session, sidecar.url, new_id("disk-full")))
        answers.append(await call(session, sidecar.url, new_id("disk-full")))
    statuses = [a.status for a in answers]
    first = statuses.index(503)
    assert first >= 2 and statuses[:first] == [200] * first and statuses[first:] == [503] * 2
    assert answers[-1].json()["error"]["code"] == "audit_unavailable"

    assert sidecar.proc.alive()
    metrics = await asyncio.to_thread(scrape_accounted, sidecar.metrics_url, len(answers))
    lines = sidecar.log_lines()
    [started] = logged(lines, FULL_SINCE)
    assert "disk full" in started["reason"], started
    assert "No space left on device" in started["reason"], started
    dropped = dropped_ids(lines)
    assert metrics.value("llm_audit_records_dropped_total") == len(dropped) >= 1
    assert metrics.value("llm_audit_requests_refused_total") == 2
    assert metrics.value("llm_audit_spool_failed") == 0  # full, not failed: it recovers
    status, body = health(sidecar.url)
    assert status == 503 and "audit spool full" in body["problems"]

    s3_cut.restore()
    await asyncio.to_thread(
        wait_for, lambda: health(sidecar.url), _drained, "/health 200 and the spool empty"
    )
    back = await run_load(sidecar.url, 4, 2, "disk-full-back")
    assert [a.status for a in back.answers] == [200] * 4
    answered = {a.request_id for a in [*answers, *back.answers]}
    result = await asyncio.to_thread(
        wait_reconciled, sidecar.moto_url, sidecar.bucket, answered - set(dropped)
    )
    report(
        "disk-full",
        result,
        sent=len(answered),
        dropped=len(dropped),
        refused_503=2,
        served_before_full=first,
    )
    assert_exactly_once(result)
    assert list((tiny_tmpfs / "quarantine").iterdir()) == [], "a torn frame was left behind"
    assert sidecar.proc.alive()
    log_objects(sidecar.all_log_lines())


def _drained(answer: tuple[int, dict[str, Any]]) -> bool:
    """Healthy with nothing left to ship: room is free for sure (not just one batch's worth)."""
    status, body = answer
    return status == 200 and body["audit"]["spoolBytes"] == 0
