"""buildspec.yml (CodeBuild `mistral8b-vllm-build`): the phases call steps the build script has."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from tests.deploy.tools import ROOT, SCRIPTS

BUILDSPEC = ROOT / "buildspec.yml"


def spec() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BUILDSPEC.read_text())
    return data


def commands(phase: str) -> str:
    return "\n".join(spec()["phases"][phase]["commands"])


def test_shape() -> None:
    assert str(spec()["version"]) == "0.2"
    assert list(spec()["phases"]) == ["install", "pre_build", "build", "post_build"]


def test_token_is_a_secret_not_a_variable() -> None:
    env = spec()["env"]
    assert "HF_TOKEN" in env["secrets-manager"]
    assert "HF_TOKEN" not in env.get("variables", {})


def test_model_download_build_push_then_redeploy_in_that_order() -> None:
    steps = []
    for phase in ("pre_build", "build", "post_build"):
        steps += re.findall(r"build-push-deploy\.sh --steps (\w+)", commands(phase))
    assert steps == ["model", "build", "push", "deploy"]
    help_text = subprocess.run(
        [str(SCRIPTS / "build-push-deploy.sh"), "--help"], capture_output=True, text=True
    ).stdout
    for step in steps:
        assert re.search(rf"^\s+{step}\s", help_text, re.MULTILINE), step


def test_images_get_content_tags_from_the_build_script() -> None:
    # No --tag: scripts/image_tag.py derives them (engine + pinned model, sidecar sources).
    for phase in ("pre_build", "build", "post_build"):
        assert "--tag" not in commands(phase)
    assert spec()["env"]["variables"]["VLLM_REPO"] == "mistral8b-vllm"
    assert "MODEL_REVISION" not in spec()["env"]["variables"]  # vllm_engine/model.env


def test_codebuild_uses_its_own_region() -> None:
    variables = spec()["env"]["variables"]
    assert "AWS_REGION" not in variables and "AWS_DEFAULT_REGION" not in variables
    assert "eu-central-1" not in BUILDSPEC.read_text()


def test_base_images_come_through_the_pull_through_cache() -> None:
    assert spec()["env"]["variables"]["BASE_IMAGE_PREFIX"] == "docker-hub"
    assert "BASE_IMAGE_REGISTRY" in commands("pre_build")


def test_nothing_is_pushed_after_a_failed_build() -> None:
    post = commands("post_build")
    assert post.index("CODEBUILD_BUILD_SUCCEEDING") < post.index("--steps push")
