"""Property: whatever happens, no record past its durability point is lost, and none is invented.

Hypothesis drives random sequences of append, sync, seal, ship, failed ship,
process crash, host crash and clean restart against the real spool and shipper
on a temp dir, next to a tiny model:

- a record is *accepted* when `append` returned; refused ones (spool full) must
  never show up anywhere;
- an accepted record becomes *durable* when a later `sync`, `seal_active` or
  clean `close` returned;
- a process crash (objects dropped, nothing sealed) loses nothing accepted;
- a host crash (additionally every unsealed segment cut back to the size the
  spool reports as fsynced) may lose accepted records that were not durable yet.

At the end everything is shipped and the objects are decoded: every accepted
record not possibly lost by a host crash is there exactly once, with its bytes,
and nothing else is. S3 is the in-memory `ObjectSink` below: the sink seam
itself is tested against moto in test_shipper.py.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar_audit.s3_sink import SinkError
from sidecar_audit.shipper import Shipper
from sidecar_audit.spool import Spool, SpoolFull

T0 = 1_800_000_000.0


class MemorySink:
    """Objects by key; while `down`, every put fails as an unreachable S3 would."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = False

    async def put(self, key: str, body: bytes, content_type: str) -> None:
        if self.down:
            raise SinkError("S3 is down", code="EndpointConnectionError", retryable=True)
        self.objects[key] = body

    def records(self) -> list[bytes]:
        out: list[bytes] = []
        for key, body in self.objects.items():
            if key.endswith(".ndjson.gz"):
                lines = gzip.decompress(body).split(b"\n")
                assert lines[-1] == b"", key
                out.extend(lines[:-1])
            else:
                out.append(body)
        return out


@dataclass
class Model:
    accepted: dict[int, bytes] = field(default_factory=dict)
    volatile: set[int] = field(default_factory=set)  # accepted, not yet covered by a sync
    maybe_lost: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)

    def append(self, n: int, payload: bytes) -> None:
        self.accepted[n] = payload
        self.volatile.add(n)

    def durable(self) -> None:
        self.volatile.clear()

    def host_crash(self) -> None:
        self.maybe_lost |= self.volatile
        self.volatile.clear()


def payload(n: int) -> bytes:
    return b'{"requestId":"r%d","timestamp":"2027-01-15T08:00:00.000000Z","v":"%s"}' % (
        n,
        b"z" * (n % 17),
    )


APPEND = st.tuples(st.just("append"), st.integers(1, 5))
OTHER = st.sampled_from(
    ["sync", "seal", "ship", "ship_fail", "process_crash", "host_crash", "restart"]
).map(lambda op: (op, 0))
OPS = st.lists(st.one_of(APPEND, APPEND, OTHER), min_size=6, max_size=30)


@dataclass
class Life:
    spool: Spool
    shipper: Shipper


class Scenario:
    def __init__(
        self, directory: Path, max_records: int, max_bytes: int, per_request: bool
    ) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.per_request = per_request
        self.sink = MemorySink()
        self.model = Model()
        self.next_id = 0

    async def start(self) -> Life:
        spool = Spool(
            self.directory,
            segment_max_records=self.max_records,
            segment_max_age_s=3600,
            fsync_interval_s=3600,  # only the scenario's own syncs: deterministic
            max_bytes=self.max_bytes,
        )
        report = await spool.open()
        # Frames are written whole and host crashes cut at synced frame boundaries,
        # so recovery never finds a torn frame here.
        assert report.quarantined_bytes == 0, report
        shipper = Shipper(spool, self.sink, prefix="logs", per_request_objects=self.per_request)
        return Life(spool, shipper)

    async def step(self, life: Life, op: str, count: int) -> Life:
        if op == "append":
            for _ in range(count):
                n, self.next_id = self.next_id, self.next_id + 1
                try:
                    life.spool.append(payload(n), T0 + n)
                except SpoolFull:
                    self.model.refused.add(n)
                else:
                    self.model.append(n, payload(n))
        elif op in ("sync", "seal"):
            await (life.spool.sync() if op == "sync" else life.spool.seal_active())
            self.model.durable()
        elif op in ("ship", "ship_fail"):
            self.sink.down = op == "ship_fail"
            await life.shipper.ship_once()
            self.sink.down = False
        elif op == "restart":
            await life.spool.close()
            self.model.durable()
            return await self.start()
        else:
            await life.spool.abort()
            if op == "host_crash":
                for segment in life.spool.unsealed():
                    if segment.path.exists():
                        os.truncate(segment.path, segment.synced_size)
                self.model.host_crash()
            life = await self.start()
            self.model.durable()  # open() sealed (fsynced) every dead writer's segment
        return life

    async def finish(self, life: Life) -> None:
        await life.spool.close()
        life = await self.start()
        while await life.shipper.ship_once():
            pass
        assert life.spool.stats().segments == 0
        await life.spool.close()


async def run(
    ops: list[tuple[str, int]], max_records: int, max_bytes: int, per_request: bool
) -> Scenario:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Scenario(Path(tmp), max_records, max_bytes, per_request)
        life = await scenario.start()
        for op, count in ops:
            life = await scenario.step(life, op, count)
        await scenario.finish(life)
        return scenario


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    ops=OPS,
    max_records=st.integers(1, 4),
    max_bytes=st.sampled_from([600, 2_000, 1 << 30]),
    per_request=st.booleans(),
)
# The sequences each durability rule hinges on, always run besides the random ones.
@example(  # what sync covered survives a host crash; what came after may go
    ops=[("append", 2), ("sync", 0), ("append", 1), ("host_crash", 0)],
    max_records=4,
    max_bytes=1 << 30,
    per_request=False,
)
@example(  # a failed upload deletes nothing
    ops=[("append", 3), ("seal", 0), ("ship_fail", 0), ("process_crash", 0), ("ship", 0)],
    max_records=2,
    max_bytes=1 << 30,
    per_request=True,
)
@example(  # a full spool refuses; shipping frees room; refused records never appear
    ops=[("append", 5), ("append", 5), ("seal", 0), ("ship", 0), ("append", 2)],
    max_records=3,
    max_bytes=600,
    per_request=False,
)
def test_no_durable_record_is_lost_and_none_is_invented(
    ops: list[tuple[str, int]], max_records: int, max_bytes: int, per_request: bool
) -> None:
    scenario = asyncio.run(run(ops, max_records, max_bytes, per_request))
    model = scenario.model
    shipped = scenario.sink.records()
    by_id = {payload(n): n for n in range(scenario.next_id)}
    ids = [by_id[p] for p in shipped]  # a KeyError here is an invented record
    assert len(ids) == len(set(ids)), "a record was shipped twice"
    got = set(ids)
    assert not got & model.refused, "a refused record was shipped"
    assert got <= set(model.accepted), "a record nobody appended was shipped"
    must = set(model.accepted) - model.maybe_lost
    assert must <= got, f"durable records lost: {sorted(must - got)}"
