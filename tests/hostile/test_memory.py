"""Peak memory per in-flight request stays a small multiple of its body, for any JSON shape.

Wave 1 parsed every JSON body into Python objects: `{"a":[{},{},…]}` costs ~25×
its size that way, and four 32 MB such bodies took the sidecar from 72 MB to
3.7 GB (the ECS hard limit is 3 GiB). The sidecar's own peak (VmHWM) is read
from /proc; the upstream is a plain server on loopback that reads and discards
bodies, so only the sidecar's memory is measured. The shapes, the upstream and the
measurement are the benchmark's own (bench/hostile_memory.py), so the test and the
benchmark row measure the same thing.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.hostile_memory import discard_upstream, hostile_bodies, vm_hwm_bytes
from tests.procs import free_port
from tests.sidecar_fixture import AUDIT_HEADERS

pytestmark = pytest.mark.timeout(180)

BODY_MB = 32
CONCURRENT = 4
# The design target: peak memory per in-flight request at most 4x its body.
TARGET_FACTOR = 4


@pytest.mark.parametrize("shape", ["empty objects", "empty arrays", "small floats", "nested"])
async def test_four_concurrent_32mb_hostile_bodies_stay_within_4x(start_sidecar, shape) -> None:
    port = free_port()
    upstream = await discard_upstream(port)
    try:
        sidecar = start_sidecar(f"http://127.0.0.1:{port}")
        body = hostile_bodies(BODY_MB * 1024 * 1024 - 4096)[shape]
        headers = {**AUDIT_HEADERS, "content-type": "application/json"}
        async with aiohttp.ClientSession() as session:
            url = f"{sidecar.url}/v1/chat/completions"
            async with session.post(url, data=b"{}", headers=headers) as warm:
                await warm.read()
            baseline = vm_hwm_bytes(sidecar.proc.pid)

            async def one() -> int:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
        peak = vm_hwm_bytes(sidecar.proc.pid)
    finally:
        await upstream.cleanup()
    assert statuses == [200] * CONCURRENT
    added = peak - baseline
    per_request = added / CONCURRENT / len(body)
    print(f"{shape}: baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
          f"{per_request:.2f}x body per request")  # fmt: skip
    assert per_request <= TARGET_FACTOR, f"{per_request:.2f}x the body per request"
