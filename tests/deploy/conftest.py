"""Fixtures of the deploy tests: a moto server of their own, and the stack deployed into it.

The stack uses the fixed names of DESIGN.md (CentralLLMAudit, llm-audit-dlq,
...), which other suites also create in the shared `moto_server`; a private
moto process keeps both sides from colliding.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import AWS_TEST_ENV
from tests.deploy.tools import ROOT, template
from tests.procs import Proc, free_port, python_module, wait_http

REGION = "eu-central-1"
STACK = "central-llm-test"


@dataclass(frozen=True)
class DeployedStack:
    endpoint: str
    name: str
    outputs: dict[str, str]
    vpc_id: str
    subnet_ids: list[str]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)


@pytest.fixture(scope="module")
def deploy_moto(proc_log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        f"moto-deploy-{port}",
        python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)),
        log_dir=proc_log_dir,
        env=AWS_TEST_ENV,
    )
    # `localhost`, not the address: a template above CloudFormation's inline limit
    # (51,200 bytes) travels through S3 (deploy-stack.sh), and moto finds a
    # TemplateURL's bucket in the URL's path only when the host is `localhost`.
    url = f"http://localhost:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc)
        yield url
    finally:
        proc.stop()


def _split_subnets(value: Any) -> Any:
    if value == {"Ref": "SubnetIds"}:
        return {"Fn::Split": [",", {"Ref": "SubnetIds"}]}
    if isinstance(value, dict):
        return {k: _split_subnets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_split_subnets(v) for v in value]
    return value


def moto_template() -> dict[str, Any]:
    """The template as moto can create and update it.

    - its ELBv2 listener knows only HTTP and HTTPS;
    - it cannot update a stack whose list or SSM parameter keeps its previous
      value (it splits the stored list again, looks the resolved AMI id up as a
      parameter name), so `SubnetIds` travels as a string here and is split
      where it is used, and `GpuAmiId` is a plain string (the SSM path);
    - it re-creates a resource on any update that passes one of its number
      parameters again (it compares the stored number with the passed string) and
      fails re-creating the listener, so the listener's port is the default, literal.
    """
    body = template()
    listener = body["Resources"]["Listener"]["Properties"]
    listener["Protocol"] = "HTTP"
    listener["Port"] = body["Parameters"]["ListenerPort"]["Default"]
    body["Parameters"]["SubnetIds"]["Type"] = "String"
    body["Parameters"]["GpuAmiId"]["Type"] = "String"
    body["Resources"] = _split_subnets(body["Resources"])
    return body


def lambda_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((ROOT / "lambda" / "llm_audit").glob("*.py")):
            archive.write(path, f"llm_audit/{path.name}")
    return buffer.getvalue()


def network(ec2: Any) -> tuple[str, list[str]]:
    vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for i, zone in enumerate(("eu-central-1a", "eu-central-1b"), start=1)
    ]
    return vpc_id, subnets


@pytest.fixture(scope="module")
def deployed_stack(deploy_moto: str) -> DeployedStack:
    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=deploy_moto, region_name=REGION)

    vpc_id, subnet_ids = network(client("ec2"))
    s3 = client("s3")
    s3.create_bucket(
        Bucket="central-llm-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    s3.put_object(Bucket="central-llm-artifacts", Key="lambda/ingest.zip", Body=lambda_zip())
    parameters = {
        "VpcId": vpc_id,
        "SubnetIds": ",".join(subnet_ids),
        "LambdaCodeBucket": "central-llm-artifacts",
        "LambdaCodeKey": "lambda/ingest.zip",
        "VllmImageTag": "git-0123456789ab",
        "SidecarImageTag": "git-0123456789ab",
        "DesiredCount": "1",
    }
    cfn = client("cloudformation")
    cfn.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(moto_template()),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        if not stack["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return DeployedStack(deploy_moto, STACK, outputs, vpc_id, subnet_ids)
