"""The first deploy exactly as docs/deployment.md lists it, run against a private moto.

The commands are read from the "First deploy" section's code blocks, in
order, and run with only these substitutions:
- the example VPC and subnet ids become moto's;
- `STACK_TEMPLATE` points at the template as moto can create it (its ELBv2
  listener knows only HTTP/HTTPS, see conftest.moto_template);
- step 2 (`HF_TOKEN=... scripts/build-push-deploy.sh`) needs a Docker engine
  for its model, build and push steps; here the two images are put into ECR
  under the tags the script derives (what its push would leave there) and
  the script runs its remaining step, `--steps deploy`, which checks they are
  in ECR and updates the stack;
- the model pin of step 0 is given as `MODEL_REVISION` (the committed
  `vllm_engine/model.env` leaves it for the operator to fill in);
- step 5 needs a live edge (moto does not serve API Gateway stages): the
  smoke test itself runs in test_scripts.py against a loopback endpoint.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import boto3

from tests.deploy.conftest import REGION, moto_template, network
from tests.deploy.test_scripts import aws_env
from tests.deploy.tools import ROOT, SCRIPTS, require_tool

DOC = ROOT / "docs" / "deployment.md"
PINNED = "0123456789abcdef0123456789abcdef01234567"


def documented_commands() -> list[list[str]]:
    """The `scripts/...` commands of the First deploy section, in order, as argv lists."""
    text = DOC.read_text()
    section = text[text.index("## First deploy") : text.index("### The build project")]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and not words[0].startswith("scripts/"):
                words = words[1:]  # VAR=value prefixes (HF_TOKEN=...)
            if words and words[0].startswith("scripts/"):
                commands.append(words)
    return commands


def test_the_documented_order() -> None:
    scripts = [words[0] for words in documented_commands()]
    assert scripts == [
        "scripts/deploy-stack.sh",
        "scripts/build-push-deploy.sh",
        "scripts/deploy-stack.sh",
        "scripts/smoke-test.sh",
    ]
    first, _, start, _ = documented_commands()
    assert "--package-lambda" in first
    assert first[first.index("--desired-count") + 1] == "0"
    assert start[start.index("--desired-count") + 1] == "1"


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(ROOT / argv[0]), *argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout}\n{result.stderr}"
    return result


def _image_tag(kind: str) -> str:
    argv = ["python3", str(SCRIPTS / "image_tag.py"), kind]
    if kind == "vllm":
        argv += ["--model-id", "mistralai/Ministral-8B-Instruct-2410", "--model-revision", PINNED]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_first_deploy_in_the_documented_order(deploy_moto: str, tmp_path: Path) -> None:
    require_tool("aws")
    require_tool("zip")

    def client(service: str) -> object:
        return boto3.client(service, endpoint_url=deploy_moto, region_name=REGION)

    vpc_id, subnets = network(client("ec2"))
    template = tmp_path / "stack.json"
    template.write_text(json.dumps(moto_template()))
    env = aws_env(deploy_moto) | {"STACK_TEMPLATE": str(template), "MODEL_REVISION": PINNED}
    stack_step, images_step, start_step, _smoke = documented_commands()

    # 1. The stack without tasks.
    argv = [
        {"vpc-0abc": vpc_id, "subnet-0aaa,subnet-0bbb": ",".join(subnets)}.get(w, w)
        for w in stack_step
    ]
    _run(argv, env)
    cfn = client("cloudformation")
    (stack,) = cfn.describe_stacks(StackName="central-llm")["Stacks"]  # type: ignore[attr-defined]
    assert stack["StackStatus"] == "CREATE_COMPLETE"  # (moto lists no outputs for change sets)

    # 2. Images: what the push leaves in ECR, then the script's deploy step.
    vllm_tag, sidecar_tag = _image_tag("vllm"), _image_tag("sidecar")
    assert vllm_tag.startswith("vllm-") and sidecar_tag.startswith("sidecar-")
    ecr = client("ecr")
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    )
    pushed = (
        ("mistral8b-vllm", vllm_tag),
        ("central-llm-sidecar", sidecar_tag),
        ("central-llm-sidecar", f"{sidecar_tag}-ops"),  # the reconciliation's image
    )
    for repository, tag in pushed:
        ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)  # type: ignore[attr-defined]
    assert images_step == ["scripts/build-push-deploy.sh"]
    deployed = _run([*images_step, "--steps", "deploy"], env)
    assert f"vllm {vllm_tag}, sidecar {sidecar_tag}" in deployed.stderr

    # 3. Start the service: returns (no host is needed for the stack to settle in moto;
    # in AWS the capacity provider starts one and --wait-timeout bounds the wait).
    _run(start_step, env)
    ecs = client("ecs")
    (service,) = ecs.describe_services(  # type: ignore[attr-defined]
        cluster="central-llm-service-cluster", services=["central-llm-service"]
    )["services"]
    assert service["desiredCount"] == 1
    # The stack now deploys the pushed tags (moto does not re-render a task definition
    # whose image names the tag through Fn::Sub; CloudFormation does).
    (stack,) = cfn.describe_stacks(StackName="central-llm")["Stacks"]  # type: ignore[attr-defined]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert parameters["VllmImageTag"] == vllm_tag
    assert parameters["SidecarImageTag"] == sidecar_tag
    assert str(parameters["DesiredCount"]) == "1"
    assert parameters["SubnetIds"] == ",".join(subnets)  # kept from step 1


def test_deploy_refuses_images_that_are_not_in_ecr(deploy_moto: str, tmp_path: Path) -> None:
    require_tool("aws")
    env = aws_env(deploy_moto) | {"MODEL_REVISION": PINNED}
    result = subprocess.run(
        [str(SCRIPTS / "build-push-deploy.sh"), "--steps", "deploy", "--stack", "nowhere",
         "--vllm-repo", "no-such-repo"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is not in ECR: run the build and push steps first" in result.stderr


def test_an_unpinned_model_is_refused() -> None:
    result = subprocess.run(
        ["python3", str(SCRIPTS / "image_tag.py"), "vllm", "--model-id", "m",
         "--model-revision", "main"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a pinned commit" in result.stderr


def test_tags_follow_content_only(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    for name in ("vllm_engine", "sidecar_audit", "lambda", "central_llm_ops"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)

    def tag(kind: str, revision: str = PINNED) -> str:
        argv = ["python3", str(SCRIPTS / "image_tag.py"), kind, "--root", str(copy)]
        argv += ["--model-id", "m", "--model-revision", revision] if kind == "vllm" else []
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    vllm, sidecar = tag("vllm"), tag("sidecar")
    (copy / "docs.md").write_text("a change outside both images")
    assert (tag("vllm"), tag("sidecar")) == (vllm, sidecar)
    (copy / "sidecar_audit" / "note.txt").write_text("sidecar change")
    assert tag("vllm") == vllm and tag("sidecar") != sidecar
    assert tag("vllm", "f" * 40) != vllm  # another model revision, another image
    (copy / "vllm_engine" / "entrypoint.sh").write_text("#!/bin/sh\n")
    assert tag("vllm") != vllm
