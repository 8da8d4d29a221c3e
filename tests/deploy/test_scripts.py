"""The operator scripts: shellcheck-clean, strict, self-documenting, run for real where they can.

deploy-stack.sh and smoke-test.sh run against a private moto server with the
AWS CLI (skipped, saying so, where no AWS CLI is installed). The smoke test's
public endpoint is a small HTTP server on loopback that answers like the
audited service and (or not) writes the audit item, so both outcomes of the
script are exercised.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import AWS_TEST_ENV
from tests.deploy.conftest import REGION, moto_template, network
from tests.deploy.tools import ROOT, SCRIPTS, require_tool
from tests.procs import free_port

SCRIPT_FILES = sorted(SCRIPTS.glob("*.sh"))
AWS_SCRIPTS = [p for p in SCRIPT_FILES if "aws " in p.read_text()]


def test_there_are_scripts() -> None:
    names = {p.name for p in SCRIPT_FILES}
    assert {
        "launch-prod-ecr.sh",
        "ecs-host-logs.sh",
        "apigw-require-audit-headers.sh",
        "package-lambda.sh",
        "deploy-lambda.sh",
        "deploy-stack.sh",
        "build-push-deploy.sh",
        "smoke-test.sh",
    } <= names


def test_shellcheck_is_clean() -> None:
    shellcheck = require_tool("shellcheck")
    files = [
        *SCRIPT_FILES,
        SCRIPTS / "lib" / "common.sh",
        SCRIPTS / "lib" / "venv.sh",
        SCRIPTS / "test",
        SCRIPTS / "local-stack",
        ROOT / ".ci" / "run",
        ROOT / "vllm_engine" / "entrypoint.sh",
    ]
    result = subprocess.run(
        [shellcheck, "-x", *[str(f.relative_to(ROOT)) for f in files]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPT_FILES, ids=lambda p: p.name)
def test_script_is_strict_and_has_help(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")


@pytest.mark.parametrize("script", AWS_SCRIPTS, ids=lambda p: p.name)
def test_region_is_overridable(script: Path) -> None:
    text = script.read_text()
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True).stdout
    if 'deploy-stack.sh" --package-lambda' in text:  # a wrapper: deploy-stack.sh's options
        help_text = subprocess.run(
            [str(SCRIPTS / "deploy-stack.sh"), "--help"], capture_output=True, text=True
        ).stdout
    assert "--region" in help_text


@pytest.mark.parametrize(
    "script", [p for p in SCRIPT_FILES if p.name != "deploy-lambda.sh"], ids=lambda p: p.name
)
def test_unknown_argument_is_refused(script: Path) -> None:
    result = subprocess.run(
        [str(script), "--no-such-option"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "unknown argument" in result.stderr


def test_lambda_package_holds_the_package_and_is_reproducible(tmp_path: Path) -> None:
    require_tool("zip")
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    for out in (first, second):
        result = subprocess.run(
            [str(SCRIPTS / "package-lambda.sh"), "--out", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == str(out)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"llm_audit/{p.name}" for p in (ROOT / "lambda/llm_audit").glob("*.py"))
    assert "llm_audit/ingest.py" in names


# --- against moto ---------------------------------------------------------------


def aws_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_TEST_ENV)
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION)
    return env


def test_deploy_stack_creates_the_stack_with_a_packaged_lambda(
    deploy_moto: str, tmp_path: Path
) -> None:
    require_tool("aws")
    require_tool("zip")
    ec2 = boto3.client("ec2", endpoint_url=deploy_moto, region_name=REGION)
    vpc_id, subnets = network(ec2)
    template_path = tmp_path / "stack.json"
    template_path.write_text(json.dumps(moto_template()))
    result = subprocess.run(
        [
            str(SCRIPTS / "deploy-stack.sh"),
            "--stack", "scripted",
            "--template", str(template_path),
            "--artifacts-bucket", "scripted-artifacts",
            "--package-lambda",
            "--vpc-id", vpc_id,
            "--subnets", ",".join(subnets),
            "--desired-count", "0",
        ],
        env=aws_env(deploy_moto),
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    cfn = boto3.client("cloudformation", endpoint_url=deploy_moto, region_name=REGION)
    (stack,) = cfn.describe_stacks(StackName="scripted")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    s3 = boto3.client("s3", endpoint_url=deploy_moto, region_name=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="scripted-artifacts")["Contents"]]
    (key,) = [k for k in keys if k.startswith("lambda/")]
    assert key.startswith("lambda/llm-audit-ingest-") and key.endswith(".zip")
    lam = boto3.client("lambda", endpoint_url=deploy_moto, region_name=REGION)
    config = lam.get_function(FunctionName="llm-audit-ingest")["Configuration"]
    assert config["Handler"] == "llm_audit.ingest.handler"


class _Endpoint(BaseHTTPRequestHandler):
    """Answers like the audited service; writes the audit item when `audit` is set."""

    write_item: Any = None
    audit = True
    echo_request_id = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = json.loads(body)
        request_id = self.headers["x-request-id"]
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "pong"},
                    "finish_reason": "stop",
                }
            ],
        }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-request-id", request_id if self.echo_request_id else "someone-else")
        self.end_headers()
        self.wfile.write(payload)
        if self.audit:
            started = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            self.write_item(
                Item={
                    "id": {"S": f"project#{self.headers['x-llm-project']}"},
                    "createdAt": {"S": f"{started}#{request_id}"},
                    "requestId": {"S": request_id},
                    "userId": {"S": self.headers["x-llm-user"]},
                }
            )

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def audit_table(deploy_moto: str) -> Iterator[tuple[Any, str]]:
    from central_llm_ops.audit_table import create_table_kwargs, load_definition

    name = f"SmokeAudit{free_port()}"
    dynamodb = boto3.client("dynamodb", endpoint_url=deploy_moto, region_name=REGION)
    dynamodb.create_table(**create_table_kwargs(load_definition(), name))
    yield dynamodb, name
    dynamodb.delete_table(TableName=name)


def run_smoke(
    deploy_moto: str, table: tuple[Any, str], **behaviour: bool
) -> subprocess.CompletedProcess[str]:
    require_tool("aws")
    client, name = table
    write_item = staticmethod(functools.partial(client.put_item, TableName=name))
    handler = type("Handler", (_Endpoint,), {"write_item": write_item, **behaviour})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        return subprocess.run(
            [
                str(SCRIPTS / "smoke-test.sh"),
                "--endpoint", f"http://127.0.0.1:{server.server_address[1]}",
                "--table", name,
                "--timeout", "2",
            ],
            env=aws_env(deploy_moto),
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


def test_smoke_test_passes_when_the_request_is_answered_and_audited(
    deploy_moto: str, audit_table: tuple[Any, str]
) -> None:
    result = run_smoke(deploy_moto, audit_table)
    assert result.returncode == 0, result.stderr
    assert "smoke test passed" in result.stdout


def test_smoke_test_fails_clearly_when_no_audit_item_arrives(
    deploy_moto: str, audit_table: tuple[Any, str]
) -> None:
    result = run_smoke(deploy_moto, audit_table, audit=False)
    assert result.returncode == 1
    assert "was answered, but no audit item" in result.stderr
    assert "llm-audit-dlq" in result.stderr


def test_smoke_test_fails_clearly_when_the_sidecar_is_bypassed(
    deploy_moto: str, audit_table: tuple[Any, str]
) -> None:
    result = run_smoke(deploy_moto, audit_table, echo_request_id=False)
    assert result.returncode == 1
    assert "is the audit sidecar in the path?" in result.stderr
