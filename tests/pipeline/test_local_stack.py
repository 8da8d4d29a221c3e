"""`central-llm-local-stack` end to end, as a real subprocess on free ports.

A request through the sidecar becomes a record in S3, an item in DynamoDB and
an answer of `central-llm-audit-query`; SIGTERM then stops every child and the
command exits 0. A child that dies during startup takes the others down with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest

from central_llm_ops.local_stack import UsageError, check_child_environment, child_environment
from tests.audit_s3 import wait_for_records
from tests.procs import Proc, free_port, python_module
from tests.sidecar_fixture import AUDIT_HEADERS
from tests.standin_fixture import Standin, header

BUCKET = "central-llm-audit"
TABLE = "CentralLLMAudit"


def eventually(check: Callable[[], Any], what: str, proc: Proc, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; fail with the stack's log."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if not proc.alive() or time.monotonic() > deadline:
            raise AssertionError(f"no {what} (stack alive: {proc.alive()}):\n{proc.log()}")
        time.sleep(0.2)


def start_stack(tmp_path: Path, *args: str, **env: str) -> Proc:
    return Proc(
        f"local-stack-{uuid.uuid4().hex[:6]}",
        python_module(
            "central_llm_ops.local_stack",
            "--free-ports",
            "--state-dir",
            str(tmp_path / "state"),
            *args,
        ),
        log_dir=tmp_path,
        env=env,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def query_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("central-llm-audit-query")
    argv = [str(script)] if script.exists() else python_module("central_llm_ops.audit_query")
    return subprocess.run(
        [*argv, *args, "--format", "jsonl"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Proc, dict[str, Any]]]:
    proc = start_stack(tmp_path)
    summary_path = tmp_path / "state" / "stack.json"
    try:
        eventually(summary_path.exists, "stack.json", proc, timeout=90)
        yield proc, json.loads(summary_path.read_text())
    finally:
        proc.stop(grace_s=60)


def test_request_to_s3_to_dynamodb_to_query_then_sigterm_stops_everything(
    stack: tuple[Proc, dict[str, Any]],
) -> None:
    proc, summary = stack
    assert summary["standin"] is True
    assert set(summary["children"]) == {"moto", "standin", "sidecar", "ingest-runner"}
    printed = proc.log()
    assert f"curl -si {summary['urls']['openaiBaseUrl']}/chat/completions" in printed
    assert "central-llm-audit-query user alice" in printed

    project, user = f"pipe-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(
        base_url=summary["urls"]["openaiBaseUrl"],
        api_key="not-checked",
        default_headers={"x-llm-source": project, "x-llm-user": user, "x-llm-request-type": "chat"},
        max_retries=0,
    )
    messages = [{"role": "user", "content": "Say hello"}]
    ids = {"stream": f"stream-{uuid.uuid4().hex}", "plain": f"plain-{uuid.uuid4().hex}"}
    raw = client.chat.completions.with_raw_response.create(
        model=summary["model"],
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-request-id": ids["stream"]},
    )
    assert raw.headers["x-request-id"] == ids["stream"]
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
    )
    raw = client.chat.completions.with_raw_response.create(
        model=summary["model"],
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"x-request-id": ids["plain"]},
    )
    assert raw.headers["x-request-id"] == ids["plain"]
    answer = raw.parse().choices[0].message.content
    assert streamed and answer

    # S3: one record per request, under logs/YYYY/MM/DD/
    moto = summary["aws"]["endpoint"]
    records = wait_for_records(moto, BUCKET, ids.values()).by_id()
    assert records[ids["stream"]]["stream"] is True
    assert records[ids["stream"]]["response"]["choices"][0]["content"] == streamed
    assert records[ids["plain"]]["userId"] == user

    # DynamoDB: the item under the keys of DESIGN.md, pointing back at the S3 object
    dynamodb = boto3.client("dynamodb", endpoint_url=moto)
    for request_id in ids.values():
        key = {
            "id": {"S": f"project#{project}"},
            "createdAt": {"S": f"{records[request_id]['timestamp']}#{request_id}"},
        }
        item = eventually(
            lambda key=key: dynamodb.get_item(TableName=TABLE, Key=key).get("Item"),
            f"DynamoDB item for {request_id}",
            proc,
        )
        assert item["requestId"] == {"S": request_id}
        assert item["userId"] == {"S": user}
        assert item["statusCode"] == {"N": "200"}
        assert item["outcome"] == {"S": "completed"}
        assert item["auditObjectKey"]["S"].startswith("logs/")

    # the query command finds both, and one request with its full record from S3
    env = summary["queryEnv"]
    listed = query_command("user", user, "--since", "1h", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["requestId"] for line in listed.stdout.splitlines()} == set(
        ids.values()
    )
    one = query_command("request", ids["stream"], "--project", project, env=env)
    assert one.returncode == 0, one.stderr
    found = json.loads(one.stdout)
    assert found["item"]["requestId"] == ids["stream"]
    assert found["record"]["response"]["choices"][0]["content"] == streamed

    # SIGTERM: every child stopped (sidecar first), exit status 0
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.log()
    stopped = [e["child"] for e in json_lines(proc.log()) if e.get("event") == "child_stopped"]
    assert stopped == ["sidecar", "ingest-runner", "standin", "moto"]
    assert all(pid_gone(child["pid"]) for child in summary["children"].values())


def test_upstream_url_replaces_the_standin(
    tmp_path: Path, start_standin: Callable[..., Standin]
) -> None:
    upstream = start_standin(model="pipeline-upstream-model")
    proc = start_stack(tmp_path, "--upstream", upstream.url)
    try:
        summary_path = tmp_path / "state" / "stack.json"
        eventually(summary_path.exists, "stack.json", proc, timeout=90)
        summary = json.loads(summary_path.read_text())
        assert set(summary["children"]) == {"moto", "sidecar", "ingest-runner"}
        assert summary["urls"]["upstream"] == upstream.url
        assert summary["model"] == "pipeline-upstream-model"  # asked of the upstream
        request_id = f"up-{uuid.uuid4().hex}"
        client = openai.OpenAI(base_url=summary["urls"]["openaiBaseUrl"], api_key="-")
        client.chat.completions.create(
            model=summary["model"],
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-request-id": request_id, **AUDIT_HEADERS},
        )
        assert [header(e, "x-request-id") for e in upstream.requests("/v1/chat/completions")] == [
            request_id
        ]
        wait_for_records(summary["aws"]["endpoint"], BUCKET, [request_id])
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.log()
    finally:
        proc.stop(grace_s=60)


def test_a_child_dying_during_startup_stops_the_others_and_names_it(tmp_path: Path) -> None:
    proc = start_stack(tmp_path, AUDIT_SPOOL_FULL_POLICY="bogus")  # the sidecar refuses it
    assert proc.wait(timeout=90) == 1
    log = proc.log()
    assert "sidecar exited with status 2 during startup" in log
    assert "configuration error: AUDIT_SPOOL_FULL_POLICY" in log  # the tail of its log
    started = {e["child"]: e["pid"] for e in json_lines(log) if e.get("event") == "child_started"}
    assert set(started) == {"moto", "standin", "sidecar"}
    assert all(pid_gone(pid) for pid in started.values())
    assert not (tmp_path / "state" / "stack.json").exists()


def test_a_sidecar_whose_upstream_is_down_is_reported_not_ready(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = start_stack(tmp_path, "--upstream", down, "--ready-timeout", "3")
    assert proc.wait(timeout=90) == 1
    log = proc.log()
    assert "sidecar was not ready within 3 s (/health: 503" in log
    assert "vllm:" in log  # the sidecar's own reason, from its /health body
    started = {e["child"]: e["pid"] for e in json_lines(log) if e.get("event") == "child_started"}
    assert set(started) == {"moto", "sidecar"}
    assert all(pid_gone(pid) for pid in started.values())


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_stack(tmp_path, "--moto-port", str(port))
        assert proc.wait(timeout=60) == 2
    log = proc.log()
    assert f"port {port} (moto) is in use" in log
    assert "child_started" not in log


@pytest.mark.parametrize(
    "inherited",
    [
        {"AWS_PROFILE": "prod"},
        {"AWS_ENDPOINT_URL": "https://s3.eu-central-1.amazonaws.com"},
        {"AWS_ENDPOINT_URL_S3": "https://s3.eu-central-1.amazonaws.com"},
        {"AWS_ACCESS_KEY_ID": "AKIAREAL", "AWS_SESSION_TOKEN": "real"},
        {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
    ],
)
def test_children_never_inherit_a_way_to_real_aws(inherited: dict[str, str]) -> None:
    env = child_environment({"PATH": "/usr/bin", **inherited}, "http://127.0.0.1:5000")
    check_child_environment(env)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert env["AWS_ACCESS_KEY_ID"] == "local"
    assert env["AWS_CONFIG_FILE"] == os.devnull
    assert not {k for k in inherited if k not in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")} & set(
        env
    )
    assert env["PATH"] == "/usr/bin"


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_ACCESS_KEY_ID": "local"},
        {"AWS_ENDPOINT_URL": "https://dynamodb.eu-central-1.amazonaws.com"},
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_ENDPOINT_URL_DYNAMODB": "https://dynamodb.eu-central-1.amazonaws.com",
        },
    ],
)
def test_an_environment_that_could_reach_aws_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="refusing to start"):
        check_child_environment(env)


def test_the_console_script_is_declared() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'central-llm-local-stack = "central_llm_ops.local_stack:main"' in pyproject
