"""The sidecar under test as a real process (`python -m sidecar_audit`), wired to real servers.

`start_sidecar(upstream_url, spool_dir=None, **settings)` starts one; a `Sidecar`
can then be killed (SIGKILL), stopped (SIGTERM) and restarted on the same port,
bucket and spool directory, as ECS would start the next task on the same volume.
`sidecar_app(...)` runs the sidecar's application in the test's own process instead,
for tests that look inside it (the garbage it leaves, which call writes what).
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar_audit.app import PROXY, build_app
from sidecar_audit.config import Config
from sidecar_audit.proxy import Finished
from tests.audit_s3 import AuditObjects, create_bucket, read_audit, wait_for_records
from tests.procs import Proc, free_port, python_module, wait_http

AUDIT_HEADERS = {"x-llm-source": "test-app", "x-llm-user": "tester", "x-llm-request-type": "chat"}


@dataclass
class Sidecar:
    url: str
    metrics_url: str
    proc: Proc
    bucket: str
    spool_dir: Path
    env: dict[str, str]
    moto_url: str
    log_dir: Path
    earlier: list[Proc] = field(default_factory=list)  # processes replaced by restart()

    def audit(self) -> AuditObjects:
        return read_audit(self.moto_url, self.bucket)

    def wait_for_records(self, request_ids: list[str], timeout: float = 30.0) -> AuditObjects:
        return wait_for_records(self.moto_url, self.bucket, request_ids, timeout)

    def log_lines(self) -> list[str]:
        return self.proc.log().splitlines()

    def all_log_lines(self) -> list[str]:
        """Every process's log lines, the earliest process first."""
        return [line for proc in [*self.earlier, self.proc] for line in proc.log().splitlines()]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no seal, no drain; the spool stays as the crash left it."""
        self.proc.kill()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (what ECS sends on stop) and the exit code once the process is gone."""
        self.proc.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self, **settings: str) -> Proc:
        """A new process on the same port, bucket and spool directory; the old one must be gone."""
        assert not self.proc.alive(), "stop or kill the running process first"
        self.env = {**self.env, **settings}
        self.earlier.append(self.proc)
        name = f"{self.earlier[0].name}-r{len(self.earlier)}"
        self.proc = launch(name, self.env, self.log_dir, int(self.env["LISTEN_PORT"]))
        return self.proc


StartSidecar = Callable[..., Sidecar]  # the type of the `start_sidecar` fixture


def launch(name: str, env: dict[str, str], log_dir: Path, port: int) -> Proc:
    proc = Proc(name, python_module("sidecar_audit"), log_dir=log_dir, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


@pytest.fixture
def start_sidecar(
    moto_server: str, aws_endpoint_env: dict[str, str], tmp_path: Path, proc_log_dir: Path
) -> Iterator[Callable[..., Sidecar]]:
    """Factory: start a sidecar in front of `upstream_url`, with its own bucket and spool."""
    started: list[Sidecar] = []

    def start(upstream_url: str, spool_dir: Path | None = None, **settings: str) -> Sidecar:
        # WORKERS=n serves metrics on METRICS_PORT..+n-1: keep a few free after it.
        port = free_port()
        metrics_port = free_port(span=4, avoid={port})
        bucket = settings.pop("AUDIT_BUCKET", f"audit-{uuid.uuid4().hex[:12]}")
        create_bucket(moto_server, bucket)
        spool_dir = spool_dir or tmp_path / f"spool-{len(started)}"
        env = {
            **aws_endpoint_env,
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(metrics_port),
            "UPSTREAM_URL": upstream_url,
            "AUDIT_BUCKET": bucket,
            "AUDIT_SPOOL_DIR": str(spool_dir),
            "AUDIT_FLUSH_INTERVAL_S": "0.3",
            "HEALTH_CACHE_S": "0",
            "EMF_INTERVAL_S": "0",
            "SHUTDOWN_GRACE_S": "10",
            "SHUTDOWN_SHIP_S": "10",
            "LOG_LEVEL": "info",
            **settings,
        }
        name = f"sidecar-{len(started)}-{port}"
        proc = launch(name, env, proc_log_dir, port)
        sidecar = Sidecar(
            url=f"http://127.0.0.1:{port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            proc=proc,
            bucket=bucket,
            spool_dir=spool_dir,
            env=env,
            moto_url=moto_server,
            log_dir=proc_log_dir,
        )
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        for proc in [sidecar.proc, *sidecar.earlier]:
            proc.stop()


@contextlib.asynccontextmanager
async def sidecar_app(
    upstream_url: str, moto_server: str, tmp_path: Path, **settings: str
) -> AsyncIterator[tuple[web.Application, str]]:
    """The sidecar's application on aiohttp's test server (loopback), auditing to moto;
    the caller has pointed the AWS endpoint variables at moto."""
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    create_bucket(moto_server, bucket)
    config = Config.from_env(
        {
            "UPSTREAM_URL": upstream_url,
            "AUDIT_BUCKET": bucket,
            "AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
            "METRICS_PORT": "0",
            "EMF_INTERVAL_S": "0",
            "HEALTH_CACHE_S": "0",
            **settings,
        }
    )
    app = build_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield app, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def finished_exchanges(app: web.Application) -> list[Finished]:
    """Every exchange the in-process sidecar finishes from now on, in order: what its
    proxy hands to the audit trail (outcome, record), kept on the way."""
    proxy = app[PROXY]
    finished: list[Finished] = []
    hand_over = proxy._on_finished

    def on_finished(done: Finished) -> None:
        finished.append(done)
        hand_over(done)

    proxy._on_finished = on_finished
    return finished
