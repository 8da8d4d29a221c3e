"""compose.yaml (and its GPU override): valid Compose, and the same shape as the ECS task."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from sidecar_audit.config import SETTINGS
from tests.deploy.tools import ROOT, container, environment, require_tool

COMPOSE = ROOT / "compose.yaml"
COMPOSE_GPU = ROOT / "compose.gpu.yaml"
SDK_VARIABLES = {
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def test_compose_files_follow_the_compose_specification() -> None:
    checker = require_tool("check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(COMPOSE_GPU)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_shares_the_vllm_network_namespace_like_awsvpc() -> None:
    sidecar = services()["sidecar"]
    assert sidecar["network_mode"] == "service:vllm"
    assert "ports" not in sidecar
    published = [p.split(":")[-1] for p in services()["vllm"]["ports"]]
    assert "8000" in published
    assert "8001" not in published  # vLLM stays behind the sidecar
    assert sidecar["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_sidecar_environment_matches_the_task_definition() -> None:
    local = services()["sidecar"]["environment"]
    ecs = environment(container("audit-sidecar"))
    known = {s.env for s in SETTINGS}
    assert set(local) - known - SDK_VARIABLES == set()
    assert local["REQUIRE_AUDIT_HEADERS"] == "true"
    for name in (
        "LISTEN_PORT",
        "UPSTREAM_URL",
        "AUDIT_SPOOL_DIR",
        "SHUTDOWN_GRACE_S",
        "SHUTDOWN_SHIP_S",
    ):
        assert local[name] == ecs[name], name
    assert local["AWS_ENDPOINT_URL"] == "http://aws:5000"
    assert "/spool" in services()["sidecar"]["volumes"][0]
    stop = services()["sidecar"]["stop_grace_period"]
    assert int(stop.rstrip("s")) >= float(ecs["SHUTDOWN_GRACE_S"]) + float(ecs["SHUTDOWN_SHIP_S"])


def test_vllm_runs_a_small_model_on_the_cpu_image_by_default() -> None:
    vllm = services()["vllm"]
    assert "vllm-openai-cpu:v" in vllm["build"]["args"]["VLLM_BASE_IMAGE"]
    assert vllm["build"]["context"] == "vllm_engine"
    assert "Qwen/Qwen2.5-0.5B-Instruct" in vllm["environment"]["MODEL"]
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["vllm"]
    assert "vllm/vllm-openai:v" in gpu["build"]["args"]["VLLM_BASE_IMAGE"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_local_aws_is_initialised_before_the_sidecar_and_the_runner() -> None:
    found = services()
    assert found["aws"]["image"].startswith("motoserver/moto:")
    assert found["aws"]["image"] != "motoserver/moto:latest"
    init = found["aws-init"]
    assert init["entrypoint"] == ["python", "-m", "central_llm_ops.local_aws"]
    for name in ("sidecar", "ingest"):
        assert (
            found[name]["depends_on"]["aws-init"]["condition"] == "service_completed_successfully"
        )
    assert init["environment"]["INGEST_QUEUE"] == found["ingest"]["environment"]["INGEST_QUEUE"]
    assert found["ingest"]["build"]["target"] == "ops"
    assert found["sidecar"]["build"]["target"] == "sidecar"
