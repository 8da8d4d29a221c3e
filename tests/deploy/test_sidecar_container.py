"""The sidecar image, built and run for real — only where a Docker engine answers.

CI here has no engine, so this skips; on a developer's machine with Docker it
builds `sidecar_audit/Dockerfile` (target `sidecar`), runs it on the host
network in front of the vLLM stand-in and moto, and checks what matters about
the container: it serves, it audits to S3 as the non-root user on its /spool
volume, and SIGTERM from `docker stop` ends it with exit code 0.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.audit_s3 import create_bucket, wait_for_records
from tests.procs import free_port
from tests.sidecar_fixture import AUDIT_HEADERS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no engine: the docker package raises its own errors
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__})")
    yield client
    client.close()


@pytest.fixture(scope="module")
def sidecar_image(docker_client: Any) -> Iterator[str]:
    tag = f"central-llm-sidecar:test-{uuid.uuid4().hex[:8]}"
    docker_client.images.build(
        path=str(REPO), dockerfile="sidecar_audit/Dockerfile", target="sidecar", tag=tag, rm=True
    )
    yield tag
    docker_client.images.remove(tag, force=True)


def test_sidecar_image_serves_audits_and_stops_cleanly(
    docker_client: Any, sidecar_image: str, standin_session: Any, moto_server: str
) -> None:
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    create_bucket(moto_server, bucket)
    port = free_port()
    container = docker_client.containers.run(
        sidecar_image,
        detach=True,
        network_mode="host",
        environment={
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
            "METRICS_PORT": "0",
            "UPSTREAM_URL": standin_session.url,
            "AUDIT_BUCKET": bucket,
            "AUDIT_FLUSH_INTERVAL_S": "0.5",
            "AWS_ENDPOINT_URL": moto_server,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
        volumes={f"spool-{bucket}": {"bind": "/spool", "mode": "rw"}},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, container.logs().decode()[-2000:]
                time.sleep(0.5)
        request_id = f"docker-{uuid.uuid4().hex}"
        body = {
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "messages": [{"role": "user", "content": "hi"}],
        }
        request = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=orjson.dumps(body),
            headers={
                **AUDIT_HEADERS,
                "content-type": "application/json",
                "x-request-id": request_id,
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        wait_for_records(moto_server, bucket, [request_id])
        container.stop(timeout=60)
        assert container.wait(timeout=60)["StatusCode"] == 0
        for line in container.logs().decode().splitlines():
            orjson.loads(line)  # one JSON object per line
    finally:
        container.remove(force=True)
        docker_client.volumes.get(f"spool-{bucket}").remove(force=True)
