"""ecs/task-definition.json against the sidecar's settings, vLLM's launch args and DESIGN.md."""

from __future__ import annotations

import subprocess

import pytest

from sidecar_audit.config import SETTINGS
from tests.deploy.tools import ROOT, container, environment, task_definition

SIDECAR_DEFAULTS = {s.env: s.default for s in SETTINGS}
# Read by the AWS SDK inside the sidecar, not by its own settings.
SDK_VARIABLES = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}
# Set in the task definition ahead of the sidecar release that reads it (the edge's
# attribution headers); inert, and to be deleted, once sidecar_audit/config.py has it.


def _seconds(name: str) -> float:
    value = environment(container("audit-sidecar")).get(name, SIDECAR_DEFAULTS[name])
    return float(value)


def vllm_launch_args(**env: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(ROOT / "vllm_engine" / "entrypoint.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return result.stdout.split()


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_family_launch_type_network_and_roles() -> None:
    task = task_definition()
    assert task["family"] == "central-llm-service"
    assert task["requiresCompatibilities"] == ["EC2"]
    assert task["networkMode"] == "awsvpc"
    assert task["taskRoleArn"] == "${TaskRole.Arn}"
    assert task["executionRoleArn"] == "${ExecutionRole.Arn}"


def test_two_essential_containers_vllm_with_the_gpu() -> None:
    names = [c["name"] for c in task_definition()["containerDefinitions"]]
    assert names == ["vllm", "audit-sidecar"]
    assert all(c["essential"] for c in task_definition()["containerDefinitions"])
    assert container("vllm")["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert "resourceRequirements" not in container("audit-sidecar")


def test_vllm_health_check_tolerates_model_load() -> None:
    vllm = container("vllm")
    check = vllm["healthCheck"]
    assert "http://127.0.0.1:8001/health" in " ".join(check["command"])
    assert check["startPeriod"] == 300  # ECS's maximum
    # Unhealthy only after start period + retries x interval: 10 minutes of loading.
    assert check["startPeriod"] + check["retries"] * check["interval"] >= 600
    # The sidecar waits this long for vLLM to become HEALTHY before the task gives up.
    assert vllm["startTimeout"] >= check["startPeriod"] + check["retries"] * check["interval"]


def test_sidecar_waits_for_healthy_vllm_and_publishes_only_8000() -> None:
    sidecar = container("audit-sidecar")
    assert sidecar["dependsOn"] == [{"containerName": "vllm", "condition": "HEALTHY"}]
    assert [p["containerPort"] for p in sidecar["portMappings"]] == [8000]
    assert "portMappings" not in container("vllm")
    env = environment(sidecar)
    assert env["LISTEN_PORT"] == "8000"
    assert env["UPSTREAM_URL"] == "http://127.0.0.1:8001"


def test_sidecar_environment_is_the_seeds_and_every_name_is_a_sidecar_setting() -> None:
    env = environment(container("audit-sidecar"))
    assert env["AUDIT_BUCKET"] == "${AuditBucketName}"
    assert env["AUDIT_PREFIX"] == "${AuditPrefix}"
    assert env["AWS_REGION"] == "${AWS::Region}"
    assert env["AUDIT_SPOOL_DIR"] == "/spool"
    assert env["REQUIRE_AUDIT_HEADERS"] == "true"
    assert env["SERVICE_NAME"] == "${ServiceName}"
    # Only behind the edge, whose integration overrides the headers (test_stack_edge.py).
    assert env["TRUST_EDGE_HEADERS"] == "true"
    unknown = set(env) - set(SIDECAR_DEFAULTS) - SDK_VARIABLES
    assert not unknown, f"not sidecar settings: {sorted(unknown)}"


def test_stop_timeout_covers_the_sidecar_drain() -> None:
    sidecar = container("audit-sidecar")
    drain = _seconds("SHUTDOWN_GRACE_S") + _seconds("SHUTDOWN_SHIP_S")
    assert sidecar["stopTimeout"] >= drain
    vllm_drain = float(flag_value(vllm_launch_args(), "--shutdown-timeout"))
    assert container("vllm")["stopTimeout"] >= vllm_drain


def test_vllm_drains_as_long_as_the_sidecar() -> None:
    args = vllm_launch_args()
    assert float(flag_value(args, "--shutdown-timeout")) == _seconds("SHUTDOWN_GRACE_S")


def test_spool_is_a_shared_volume_that_outlives_the_container() -> None:
    (volume,) = task_definition()["volumes"]
    config = volume["dockerVolumeConfiguration"]
    assert (config["scope"], config["autoprovision"]) == ("shared", True)
    sidecar = container("audit-sidecar")
    assert sidecar["mountPoints"] == [
        {"sourceVolume": volume["name"], "containerPath": "/spool", "readOnly": False}
    ]
    assert sidecar["restartPolicy"]["enabled"] is True


@pytest.mark.parametrize("name", ["vllm", "audit-sidecar"])
def test_logs_go_to_the_service_log_group(name: str) -> None:
    logging = container(name)["logConfiguration"]
    assert logging["logDriver"] == "awslogs"
    assert logging["options"]["awslogs-group"] == "${ServiceLogGroupName}"


@pytest.mark.parametrize("name", ["vllm", "audit-sidecar"])
def test_signals_reach_the_process(name: str) -> None:
    assert container(name)["linuxParameters"]["initProcessEnabled"] is True


def test_vllm_launch_arguments() -> None:
    args = vllm_launch_args(MODEL_ID="org/model")
    assert args[:3] == ["vllm", "serve", "org/model"]
    assert flag_value(args, "--host") == "127.0.0.1"
    assert flag_value(args, "--port") == "8001"
    assert flag_value(args, "--served-model-name") == "mistral-8b"
    assert flag_value(args, "--max-model-len") == "16384"
    assert "--enable-request-id-headers" in args
    # Removed from recent vLLM releases: the server refuses to start with it.
    assert "--disable-log-requests" not in args


def test_vllm_launch_arguments_follow_the_environment() -> None:
    args = vllm_launch_args(
        MODEL="/models/x",
        SERVED_MODEL_NAME="m",
        MAX_MODEL_LEN="4096",
        VLLM_EXTRA_ARGS="--dtype float32",
    )
    assert args[2] == "/models/x"
    assert flag_value(args, "--served-model-name") == "m"
    assert flag_value(args, "--max-model-len") == "4096"
    assert args[-2:] == ["--dtype", "float32"]


def test_tool_calling_is_on_with_the_mistral_parser_by_default() -> None:
    args = vllm_launch_args()
    assert "--enable-auto-tool-choice" in args
    assert flag_value(args, "--tool-call-parser") == "mistral"
    local = vllm_launch_args(TOOL_CALL_PARSER="hermes")
    assert flag_value(local, "--tool-call-parser") == "hermes"


def test_tool_calling_can_be_turned_off_and_refuses_other_values() -> None:
    args = vllm_launch_args(ENABLE_TOOL_CALLING="false")
    assert "--enable-auto-tool-choice" not in args and "--tool-call-parser" not in args
    result = subprocess.run(
        ["bash", str(ROOT / "vllm_engine" / "entrypoint.sh"), "--print"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ENABLE_TOOL_CALLING": "yes"},
    )
    assert result.returncode == 2 and "ENABLE_TOOL_CALLING" in result.stderr
