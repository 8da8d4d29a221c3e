"""Shared fixtures: real servers on loopback, started once per session where they are stateless."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, free_port, python_module, wait_http

pytest_plugins = ["tests.sidecar_fixture", "tests.standin_fixture"]

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "eu-central-1",
    "AWS_DEFAULT_REGION": "eu-central-1",
}


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> Iterator[None]:
    """Fake credentials for every AWS client the tests create; never real ones."""
    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def proc_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proc-logs")


@pytest.fixture(scope="session")
def moto_server(proc_log_dir: Path) -> Iterator[str]:
    """moto in server mode: one real HTTP endpoint for S3, DynamoDB, SQS, CloudFormation, ...

    Yields the endpoint URL. Tests isolate themselves by creating uniquely named
    buckets/tables/queues; `moto_reset` wipes everything when a test needs a clean slate.
    """
    port = free_port()
    proc = Proc(
        "moto",
        python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)),
        log_dir=proc_log_dir,
        env=AWS_TEST_ENV,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc)
        yield url
    finally:
        proc.stop()


@pytest.fixture
def aws_endpoint_env(moto_server: str) -> dict[str, str]:
    """Environment for a child process that must talk to the local AWS endpoint."""
    return {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_server}
