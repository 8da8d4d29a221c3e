"""moto's server with IAM enforced, and principals that carry exactly the files in ecs/policies/.

moto enforces IAM when started with `INITIAL_NO_AUTH_ACTION_COUNT=N`: the first
N calls are free, every later one must be signed by a known access key whose
policies allow it. The free calls create an administrator (CreateUser,
PutUserPolicy, CreateAccessKey); everything else — the stack's buckets, table
and queue, the principals — is created with the administrator's key.

A principal is an IAM user whose inline policy is a file of `ecs/policies/`
rendered as the stack renders it: every `${...}` placeholder is replaced by
the template's parameter default or the pseudo parameter's value in moto's
account and region. (Users, not roles: moto's STS refuses AssumeRole here, and
a user carries the same identity policy the role would.)

What moto leaves unchecked, and so what these tests cannot prove:
- S3 is checked per action and per resource (bucket, key prefix). Every other
  service is checked by action only: moto treats their resources as `*`, and a
  statement scoped to a DynamoDB table, SQS queue, log group or ECR repository
  ARN would be denied outright. `as_moto_sees_it` therefore widens non-S3
  resources to `*`, and the resource scoping of those statements is pinned by
  a static test instead (test_iam_enforced.py::test_non_s3_resources_name_the_stack).
- moto files S3's `?retention` and `?legal-hold` PUTs under `s3:PutObject`, so
  that a writer may not shorten a lock is pinned statically
  (test_stack_integrity.py::test_no_role_of_the_stack_can_defeat_the_lock).
- Conditions, trust policies, bucket policies, KMS key policies and SCPs are
  not evaluated; the TLS-only bucket policy is checked on the template.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.deploy.tools import POLICIES, template
from tests.procs import Proc, free_port, python_module, wait_http

FREE_CALLS = 3  # CreateUser, PutUserPolicy, CreateAccessKey for the administrator
ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-central-1"
_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
_ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def stack_values() -> dict[str, str]:
    """Placeholder values as a default deployment of the stack in moto's account resolves them."""
    values = {
        name: str(body["Default"])
        for name, body in template()["Parameters"].items()
        if "Default" in body
    }
    values.update({"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT})
    # Resource attributes the policies name (KMS resources are `*` to moto anyway).
    values["DigestSigningKey.Arn"] = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/digest-signing-key"
    return values


def render_policy(name: str, values: dict[str, str] | None = None) -> dict[str, Any]:
    """`ecs/policies/<name>.json` with its placeholders substituted; unknown names fail."""
    values = values if values is not None else stack_values()
    text = (POLICIES / f"{name}.json").read_text()

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{name}.json: no value for placeholder ${{{key}}}")
        return values[key]

    rendered: dict[str, Any] = json.loads(_PLACEHOLDER.sub(replace, text))
    return rendered


def _is_s3(resource: str) -> bool:
    return resource.startswith("arn:aws:s3:::")


def as_moto_sees_it(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with non-S3 resources widened to `*` (see the module docstring)."""
    widened = copy.deepcopy(policy)
    for statement in widened["Statement"]:
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        if not all(_is_s3(r) for r in resources):
            statement["Resource"] = "*"
    return widened


def without_action(policy: dict[str, Any], action: str) -> dict[str, Any]:
    """The policy with one action removed from every statement (empty statements dropped)."""
    trimmed = copy.deepcopy(policy)
    kept = []
    for statement in trimmed["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        actions = [a for a in actions if a != action]
        if actions:
            statement["Action"] = actions
            kept.append(statement)
    trimmed["Statement"] = kept
    return trimmed


def policy_actions(policy: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        found += [actions] if isinstance(actions, str) else actions
    return found


@dataclass(frozen=True)
class Credentials:
    """An access key of one IAM user on the enforcing moto server."""

    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def env(self) -> dict[str, str]:
        """Environment of a child process that must act as this user (and nobody else)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": "",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }


@contextlib.contextmanager
def enforcing_moto(name: str, log_dir: Path) -> Iterator[Credentials]:
    """moto's server with IAM enforced, its free calls spent on the administrator it yields."""
    port = free_port()
    proc = Proc(
        f"{name}-{port}",
        python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)),
        log_dir=log_dir,
        env={"INITIAL_NO_AUTH_ACTION_COUNT": str(FREE_CALLS)},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", proc)
        yield create_admin(endpoint)
    finally:
        proc.stop()


def create_admin(endpoint: str) -> Credentials:
    """Spend the free calls on an administrator; any other key is refused from now on."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="admin")
    iam.put_user_policy(
        UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(_ADMIN_POLICY)
    )
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    return Credentials(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def create_principal(admin: Credentials, name: str, policy: dict[str, Any]) -> Credentials:
    """An IAM user carrying exactly `policy` (as moto can evaluate it), and its access key."""
    iam = admin.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name, PolicyName=name, PolicyDocument=json.dumps(as_moto_sees_it(policy))
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(admin.endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def policy_files() -> list[Path]:
    return sorted(POLICIES.glob("*.json"))
