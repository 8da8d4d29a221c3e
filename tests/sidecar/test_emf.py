"""The CloudWatch EMF line the alarms read: AuditRecordsShipped counts each interval's records.

`AuditObjectsMissingAlarm` (ecs/stackgen/alarms.py) sums it per hour against the
items ingested, so the per-interval counts must add up to exactly the records
shipped — no running total, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.sidecar_fixture import AUDIT_HEADERS

CHAT = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": [{"role": "user", "content": "hi"}]}


async def test_shipped_counts_per_interval_add_up_to_the_records(
    standin_session, start_sidecar
) -> None:
    sidecar = start_sidecar(standin_session.url, EMF_INTERVAL_S="0.5")
    ids = [f"emf-{i}-{time.time_ns()}" for i in range(12)]
    async with aiohttp.ClientSession() as session:
        for request_id in ids:
            headers = {**AUDIT_HEADERS, "x-request-id": request_id}
            async with session.post(
                f"{sidecar.url}/v1/chat/completions", json=CHAT, headers=headers
            ) as r:
                assert r.status == 200
                await r.read()
    sidecar.wait_for_records(ids)
    deadline = time.monotonic() + 20
    total = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.6)
        lines = [json.loads(x) for x in sidecar.log_lines() if x.startswith("{")]
        emf = [x for x in lines if x.get("event") == "audit metrics"]
        total = sum(x["AuditRecordsShipped"] for x in emf)
        if total >= len(ids):
            break
    assert total == len(ids)
    metric_names = {m["Name"] for m in emf[-1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "AuditRecordsShipped" in metric_names
