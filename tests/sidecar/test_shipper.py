"""The shipper and the S3 sink against a real moto S3 server on loopback.

Covers the object layout (batch and per-request), at-least-once delivery
(nothing deleted before S3 confirmed it, same key on retry), S3 outages and
non-retryable errors (retried forever, logged), drain on shutdown, the upload
concurrency limit, and several processes on one spool directory.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from sidecar_audit.s3_sink import ObjectSink, S3ObjectSink, SinkError, classify
from sidecar_audit.shipper import Shipper
from sidecar_audit.spool import Spool
from tests.audit_s3 import create_bucket, read_audit
from tests.procs import Proc, free_port, python_module, wait_http

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-central-1"
NOV_26_LATE = 1_795_737_599.5  # 2026-11-26T23:59:59.5Z
NOV_27 = 1_795_737_600.5  # 2026-11-27T00:00:00.5Z
BACKOFF_CAP_S = 0.2


def record(request_id: str, timestamp: str = "2026-11-26T20:19:11.123456Z") -> bytes:
    return b'{"requestId":"%s","timestamp":"%s","n":1}' % (
        request_id.encode(),
        timestamp.encode(),
    )


@pytest.fixture
def s3_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """botocore finds the endpoint through the standard variable, as in production."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"audit-{uuid.uuid4().hex[:16]}"
    create_bucket(s3_endpoint, name)
    return name


def fast_shipper(spool: Spool, sink: ObjectSink, **options: Any) -> Shipper:
    """A shipper that retries and rescans quickly, so tests stay short."""
    return Shipper(
        spool,
        sink,
        prefix="logs",
        backoff_base_s=0.02,
        backoff_cap_s=BACKOFF_CAP_S,
        rescan_interval_s=0.1,
        **options,
    )


@asynccontextmanager
async def opened(spool: Spool) -> AsyncIterator[Spool]:
    await spool.open()
    try:
        yield spool
    finally:
        await spool.close()


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


def segments_on_disk(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".seg", ".open"))


# --- object layout ----------------------------------------------------------------------


async def test_a_sealed_segment_becomes_one_gzip_ndjson_batch_object(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    puts: list[tuple[float, bool]] = []
    records = [record("a"), record("b"), record("c")]
    spool = Spool(tmp_path, writer_id="00000000000000ab", wall_clock=lambda: NOV_27 + 60)
    async with opened(spool), S3ObjectSink(bucket, REGION) as sink:
        spool.append(records[0], NOV_26_LATE)  # the batch's date is its first record's
        spool.append(records[1], NOV_27)
        spool.append(records[2], NOV_27)
        await spool.seal_active()
        shipper = Shipper(spool, sink, prefix="logs", on_put=lambda s, ok: puts.append((s, ok)))
        assert await shipper.ship_once() == 1
        stats = shipper.stats()
    batch_id = "20261127T000100500000Z-00000000000000ab-0000000000"
    key = f"logs/2026/11/26/{batch_id}.ndjson.gz"
    found = read_audit(s3_endpoint, bucket)
    assert found.keys == [key]
    assert gzip.decompress(found.raw[key]) == b"".join(r + b"\n" for r in records)
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/x-ndjson"
    assert "ContentEncoding" not in head  # the gzip is the object, not a transfer encoding
    assert segments_on_disk(tmp_path) == []
    assert (stats.records_shipped, stats.objects_put, stats.put_errors) == (3, 1, 0)
    assert stats.bytes_shipped == len(found.raw[key])
    assert [ok for _, ok in puts] == [True] and puts[0][0] >= 0


async def test_per_request_objects_are_keyed_by_request_id_under_its_own_date(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    records = [
        record("req-1", "2026-11-26T23:59:59.999999Z"),
        record("req-2", "2026-11-27T00:00:00.000001Z"),
        b'{"timestamp":"2026-11-27T00:00:00.000001Z"}',  # no requestId: still shipped
    ]
    spool = Spool(tmp_path, segment_max_records=1)
    async with opened(spool), S3ObjectSink(bucket, REGION) as sink:
        for r in records:
            spool.append(r, NOV_27)
        await spool.seal_active()
        shipper = Shipper(spool, sink, prefix="logs", per_request_objects=True)
        assert await shipper.ship_once() == 3
    found = read_audit(s3_endpoint, bucket)
    by_key = dict(found.raw)
    # <requestId>.<batch id>-<index>.json: the request id alone (client input) never names a key.
    [key_1] = [k for k in by_key if k.startswith("logs/2026/11/26/req-1.")]
    [key_2] = [k for k in by_key if k.startswith("logs/2026/11/27/req-2.")]
    assert key_1.endswith("-000000.json") and by_key.pop(key_1) == records[0]
    assert key_2.endswith(".json") and by_key.pop(key_2) == records[1]
    [(fallback_key, body)] = by_key.items()
    assert fallback_key.startswith("logs/2026/11/27/") and fallback_key.endswith("-000000.json")
    assert body == records[2]
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=bucket, Key=key_1)
    assert head["ContentType"] == "application/json"


# --- failures and retries ---------------------------------------------------------------


async def test_an_s3_outage_keeps_every_segment_until_s3_is_back(
    tmp_path: Path,
    proc_log_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens here yet
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    puts: list[bool] = []
    spool = Spool(tmp_path, segment_max_records=2)
    async with opened(spool), S3ObjectSink("outage", REGION) as sink:
        shipper = fast_shipper(spool, sink, on_put=lambda _, ok: puts.append(ok))
        shipper.start()
        for i in range(4):
            spool.append(record(f"o{i}"), NOV_27)  # the append path does not notice S3
        await until(lambda: shipper.stats().put_errors >= 3)
        assert len(segments_on_disk(tmp_path)) == 2  # nothing deleted while S3 is down
        assert spool.stats().records_appended == 4
        moto = Proc(
            "moto-outage",
            python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)),
            log_dir=proc_log_dir,
        )
        try:
            wait_http(f"{endpoint}/moto-api/", moto)
            create_bucket(endpoint, "outage")
            await until(lambda: shipper.stats().segments_shipped == 2)
            found = read_audit(endpoint, "outage")
        finally:
            await shipper.stop()
            moto.stop()
    assert sorted(r["requestId"] for r in found.records) == ["o0", "o1", "o2", "o3"]
    assert segments_on_disk(tmp_path) == []
    assert False in puts and puts[-1] is True
    failures = [r for r in caplog.records if r.getMessage() == "audit upload failed; will retry"]
    assert failures and all(r.levelno == logging.WARNING for r in failures)
    assert {r.__dict__["errorCode"] for r in failures} == {"EndpointConnectionError"}
    assert all(0 <= r.__dict__["retryInSeconds"] <= BACKOFF_CAP_S for r in failures)
    assert all("o0" not in r.getMessage() + str(r.__dict__["error"]) for r in failures)


async def test_a_non_retryable_error_is_logged_as_an_error_and_still_retried(
    tmp_path: Path, s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = f"audit-{uuid.uuid4().hex[:16]}"
    spool = Spool(tmp_path)
    async with opened(spool), S3ObjectSink(missing, REGION) as sink:
        shipper = fast_shipper(spool, sink)
        shipper.start()
        spool.append(record("late"), NOV_27)
        await spool.seal_active()
        await until(lambda: shipper.stats().put_errors >= 2)
        assert len(segments_on_disk(tmp_path)) == 1
        create_bucket(s3_endpoint, missing)  # an operator fixes the bucket
        await until(lambda: shipper.stats().segments_shipped == 1)
        await shipper.stop()
    errors = [r for r in caplog.records if r.__dict__.get("errorCode") == "NoSuchBucket"]
    assert errors and all(r.levelno == logging.ERROR for r in errors)
    assert all(r.__dict__["retryable"] is False for r in errors)
    assert [r["requestId"] for r in read_audit(s3_endpoint, missing).records] == ["late"]


class LosesFirstConfirmation:
    """S3 stores the first object, but the answer never reaches us (a timeout, a crash)."""

    def __init__(self, inner: S3ObjectSink) -> None:
        self.inner = inner
        self.keys: list[str] = []

    async def put(self, key: str, body: bytes, content_type: str) -> None:
        await self.inner.put(key, body, content_type)
        self.keys.append(key)
        if len(self.keys) == 1:
            raise SinkError("confirmation lost", code="ReadTimeoutError", retryable=True)


async def test_a_retry_after_a_lost_confirmation_overwrites_the_same_object(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    async with S3ObjectSink(bucket, REGION) as real:
        sink = LosesFirstConfirmation(real)
        first = Spool(tmp_path)
        async with opened(first):
            first.append(record("once"), NOV_27)
            await first.seal_active()
            assert await Shipper(first, sink, prefix="logs").ship_once() == 0
        assert len(segments_on_disk(tmp_path)) == 1  # not confirmed: not deleted
        second = Spool(tmp_path)  # the next process
        async with opened(second):
            assert await Shipper(second, sink, prefix="logs").ship_once() == 1
    assert len(sink.keys) == 2 and sink.keys[0] == sink.keys[1]
    found = read_audit(s3_endpoint, bucket)
    assert found.keys == sink.keys[:1]
    assert [r["requestId"] for r in found.records] == ["once"]


def test_classify_decides_retryable_in_one_place() -> None:
    def client_error(code: str, status: int) -> ClientError:
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "PutObject")

    cases: list[tuple[BaseException, str, bool]] = [
        (client_error("NoSuchBucket", 404), "NoSuchBucket", False),
        (client_error("AccessDenied", 403), "AccessDenied", False),
        (client_error("SlowDown", 503), "SlowDown", True),
        (client_error("InternalError", 500), "InternalError", True),
        (client_error("RequestTimeout", 400), "RequestTimeout", True),
        (EndpointConnectionError(endpoint_url="http://x"), "EndpointConnectionError", True),
        (ReadTimeoutError(endpoint_url="http://x"), "ReadTimeoutError", True),
        (aiohttp.ServerDisconnectedError(), "ServerDisconnectedError", True),
        (NoCredentialsError(), "NoCredentialsError", False),
        (ValueError("bug"), "ValueError", False),
    ]
    for exc, code, retryable in cases:
        error = classify(exc)
        assert (error.code, error.retryable) == (code, retryable), exc


# --- shutdown ---------------------------------------------------------------------------


async def test_drain_seals_and_ships_everything_before_the_deadline(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    spool = Spool(tmp_path, segment_max_age_s=3600)
    async with opened(spool), S3ObjectSink(bucket, REGION) as sink:
        shipper = fast_shipper(spool, sink)
        shipper.start()
        for i in range(5):
            spool.append(record(f"d{i}"), NOV_27)
        assert await shipper.drain(time.monotonic() + 60) == 0
    assert segments_on_disk(tmp_path) == []
    found = read_audit(s3_endpoint, bucket)
    assert sorted(r["requestId"] for r in found.records) == [f"d{i}" for i in range(5)]


async def test_drain_leaves_what_it_cannot_ship_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    spool = Spool(tmp_path)
    async with opened(spool), S3ObjectSink("nowhere", REGION) as sink:
        shipper = fast_shipper(spool, sink)
        spool.append(record("stays"), NOV_27)
        assert await shipper.drain(time.monotonic() + 0.3) == 1
        assert shipper.stats().put_errors >= 1
    [left] = segments_on_disk(tmp_path)
    assert left.endswith(".seg")
    assert spool.stats().segments == 1


class Gauge:
    """Counts puts in flight around the real sink."""

    def __init__(self, inner: S3ObjectSink) -> None:
        self.inner = inner
        self.now = 0
        self.peak = 0
        self.started: list[str] = []

    async def put(self, key: str, body: bytes, content_type: str) -> None:
        self.started.append(key)
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)
            await self.inner.put(key, body, content_type)
        finally:
            self.now -= 1


async def test_uploads_go_oldest_first_up_to_the_concurrency_limit(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    spool = Spool(tmp_path, segment_max_records=1)
    async with opened(spool), S3ObjectSink(bucket, REGION) as real:
        for i in range(8):
            spool.append(record(f"c{i}"), NOV_27)
        await spool.sync()
        sink = Gauge(real)
        shipper = fast_shipper(spool, sink, max_concurrent_uploads=3)
        assert await shipper.drain(time.monotonic() + 60) == 0
    assert sink.peak == 3
    assert sorted(sink.started[:3]) == sorted(sink.started)[:3]  # the three oldest went first
    assert len(read_audit(s3_endpoint, bucket).keys) == 8


# --- several processes ------------------------------------------------------------------

SHIPPER_PROCESS = """
import asyncio, sys, time
from pathlib import Path
from sidecar_audit.s3_sink import S3ObjectSink
from sidecar_audit.shipper import Shipper
from sidecar_audit.spool import Spool

class Tell:
    def __init__(self, inner):
        self.inner = inner

    async def put(self, key, body, content_type):
        await asyncio.sleep(0.01)
        await self.inner.put(key, body, content_type)
        print("PUT", key, flush=True)

async def main():
    directory, bucket, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    spool = Spool(directory)
    await spool.open()
    print("READY", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    async with S3ObjectSink(bucket, "eu-central-1") as sink:
        shipper = Shipper(spool, Tell(sink), prefix="logs", max_concurrent_uploads=2,
                          rescan_interval_s=0.05)
        await shipper.drain(time.monotonic() + 60)
    await spool.close()
    print("DONE", flush=True)

asyncio.run(main())
"""


async def test_two_processes_on_one_directory_never_ship_the_same_segment(
    tmp_path: Path, proc_log_dir: Path, aws_endpoint_env: dict[str, str], bucket: str
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, segment_max_records=1)
    async with opened(spool):
        for i in range(30):
            spool.append(record(f"p{i}"), NOV_27)
    go = tmp_path / "go"
    env = {**aws_endpoint_env, "PYTHONPATH": str(REPO)}
    procs = [
        Proc(f"shipper-{n}-{uuid.uuid4().hex[:6]}",
             [sys.executable, "-c", SHIPPER_PROCESS, str(spool_dir), bucket, str(go)],
             log_dir=proc_log_dir, env=env)
        for n in range(2)
    ]  # fmt: skip
    try:
        await until(lambda: all("READY" in p.log() for p in procs), within=60)
        go.touch()  # both start shipping at once
        await until(lambda: all("DONE" in p.log() or not p.alive() for p in procs), within=90)
        logs = [p.log() for p in procs]
    finally:
        for p in procs:
            p.stop()
    shipped = [
        [line.split()[1] for line in log.splitlines() if line.startswith("PUT ")] for log in logs
    ]
    assert all("DONE" in log for log in logs), logs
    assert len(shipped[0]) + len(shipped[1]) == 30, logs  # each segment exactly once
    assert not set(shipped[0]) & set(shipped[1])
    assert shipped[0] and shipped[1]  # both really took part
    assert segments_on_disk(spool_dir) == []
    assert len(read_audit(aws_endpoint_env["AWS_ENDPOINT_URL"], bucket).keys) == 30


KILLED_WRITER = """
import asyncio, sys
from pathlib import Path
from sidecar_audit.spool import Spool

async def main():
    spool = Spool(Path(sys.argv[1]), fsync_interval_s=3600, segment_max_age_s=3600)
    await spool.open()
    for i in range(10):
        spool.append(b'{"requestId":"k%d","timestamp":"2026-11-27T00:00:00.000000Z"}' % i,
                     1_795_737_600 + i)
    print("appended", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_sigkilled_writers_records_are_shipped_by_the_next_process(
    tmp_path: Path, proc_log_dir: Path, s3_endpoint: str, bucket: str
) -> None:
    writer = Proc(
        f"writer-{uuid.uuid4().hex[:6]}",
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        log_dir=proc_log_dir,
        env={"PYTHONPATH": str(REPO)},
    )
    try:
        await until(lambda: "appended" in writer.log() or not writer.alive(), within=30)
    finally:
        writer.kill()
    assert [p.endswith(".open") for p in segments_on_disk(tmp_path)] == [True]
    spool = Spool(tmp_path)
    report = await spool.open()
    try:
        assert (report.adopted, report.records) == (1, 10)
        async with S3ObjectSink(bucket, REGION) as sink:
            shipper = fast_shipper(spool, sink)
            assert await shipper.drain(time.monotonic() + 60) == 0
    finally:
        await spool.close()
    found = read_audit(s3_endpoint, bucket)
    assert sorted(r["requestId"] for r in found.records) == [f"k{i}" for i in range(10)]
    assert segments_on_disk(tmp_path) == []
    assert os.listdir(tmp_path / "quarantine") == []
