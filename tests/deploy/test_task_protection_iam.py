"""Task scale-in protection in the stack: the switch, the permission and its reach, the setting.

What moto can and cannot prove here (moto 5.2.5, and its main branch read
2026-08: `IMPLEMENTATION_COVERAGE.md` lists `get_task_protection` and
`update_task_protection` unchecked): moto implements neither action, and it
checks ECS calls by action only (resources are `*` to it). So:

- that the policy allows exactly the two actions on the tasks of this cluster,
  and nothing else, is evaluated statement by statement with moto's own IAM
  evaluator (`moto.iam.access_control.IAMPolicy`) on concrete ARNs;
- under moto's enforcing server, the task role's policies (writer + protection,
  as moto sees them) are refused every other ECS action the task could abuse;
  they let UpdateTaskProtection and GetTaskProtection through the authorisation
  step (moto then fails with a 500: not implemented), and the writer policy
  alone (`TaskProtection=false`) is refused both (403 AccessDenied).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.iam.access_control import IAMPolicy, PermissionResult

from ecs.stackgen.cfn import substitute
from sidecar_audit.config import Config
from tests.deploy.iam_enforced import (
    ACCOUNT,
    REGION,
    Credentials,
    create_principal,
    enforcing_moto,
    render_policy,
    stack_values,
)
from tests.deploy.tools import POLICIES, container, environment, load_json, template

CLUSTER = stack_values()["ClusterName"]
OUR_TASK = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/0123456789abcdef0123456789abcdef"
OTHER_CLUSTER_TASK = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/other-cluster/0123456789abcdef"
OTHER_ACCOUNT_TASK = f"arn:aws:ecs:{REGION}:210987654321:task/{CLUSTER}/0123456789abcdef"
OUR_SERVICE = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER}/central-llm-service"
OUR_CLUSTER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"


def test_the_policy_file_is_two_actions_on_the_tasks_of_this_cluster() -> None:
    assert load_json(POLICIES / "ecs-task-protection.json")["Statement"] == [
        {
            "Sid": "ProtectTasksOfThisClusterOnly",
            "Effect": "Allow",
            "Action": ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"],
            "Resource": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/"
            "${ClusterName}/*",
        }
    ]


def test_the_stack_attaches_it_to_the_task_role_only_when_switched_on() -> None:
    body = template()
    assert body["Parameters"]["TaskProtection"]["Default"] == "true"
    assert body["Parameters"]["TaskProtection"]["AllowedValues"] == ["true", "false"]
    assert body["Conditions"]["HasTaskProtection"] == {
        "Fn::Equals": [{"Ref": "TaskProtection"}, "true"]
    }
    policy = body["Resources"]["TaskProtectionPolicy"]
    assert policy["Type"] == "AWS::IAM::Policy"
    assert policy["Condition"] == "HasTaskProtection"
    assert policy["Properties"] == {
        "PolicyName": "ecs-task-protection",
        "PolicyDocument": substitute(load_json(POLICIES / "ecs-task-protection.json")),
        "Roles": [{"Ref": "TaskRole"}],
    }
    attached = [
        name
        for name, resource in body["Resources"].items()
        if resource["Type"] == "AWS::IAM::Policy"
        and "ecs:UpdateTaskProtection" in str(resource["Properties"]["PolicyDocument"])
    ]
    assert attached == ["TaskProtectionPolicy"]


def test_the_sidecar_setting_follows_the_switch_and_its_values_start() -> None:
    env = environment(container("audit-sidecar"))
    assert env["TASK_PROTECTION"] == "${TaskProtection}"
    # The task definition's values pass the sidecar's own validation, as on ECS (the agent
    # sets ECS_AGENT_URI; the parameter's default replaces the placeholder).
    on_ecs = {
        **{k: v for k, v in env.items() if "${" not in v},
        "TASK_PROTECTION": "true",
        "ECS_AGENT_URI": "http://169.254.170.2/api/0123456789abcdef-1234567890",
    }
    config = Config.from_env(on_ecs)
    assert config.protects_task
    assert (
        config.task_protection_idle
        < config.protection_renew_s()
        < config.task_protection_minutes * 60
    )


def _verdict(policy: dict[str, Any], action: str, resource: str) -> PermissionResult:
    return IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)


@pytest.mark.parametrize("action", ["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"])
def test_the_policy_allows_the_two_actions_on_our_tasks_only(action: str) -> None:
    policy = render_policy("ecs-task-protection")
    assert _verdict(policy, action, OUR_TASK) is PermissionResult.PERMITTED
    for elsewhere in (OTHER_CLUSTER_TASK, OTHER_ACCOUNT_TASK, OUR_SERVICE, OUR_CLUSTER):
        assert _verdict(policy, action, elsewhere) is PermissionResult.NEUTRAL, elsewhere


@pytest.mark.parametrize(
    "action",
    [
        "ecs:StopTask",
        "ecs:RunTask",
        "ecs:UpdateService",
        "ecs:DeleteService",
        "ecs:DescribeTasks",
        "ecs:ExecuteCommand",
        "ecs:UpdateContainerInstancesState",
        "ecs:TagResource",
    ],
)
def test_the_task_policies_allow_no_other_ecs_action(action: str) -> None:
    for name in ("ecs-task-protection", "ecs-task-audit-writer"):
        policy = render_policy(name)
        for resource in (OUR_TASK, OUR_SERVICE, OUR_CLUSTER, "*"):
            assert _verdict(policy, action, resource) is PermissionResult.NEUTRAL, (name, resource)


@dataclass(frozen=True)
class TaskPrincipals:
    with_protection: Credentials  # TaskProtection=true: writer + protection policies
    writer_only: Credentials  # TaskProtection=false: the writer policy alone


@pytest.fixture(scope="module")
def principals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskPrincipals]:
    """moto enforcing IAM; the task role's policies as moto sees them, switch on and off."""
    log_dir: Path = tmp_path_factory.mktemp("moto-iam-protection")
    with enforcing_moto("moto-iam-protection", log_dir) as admin:
        writer = render_policy("ecs-task-audit-writer")
        protection = render_policy("ecs-task-protection")
        both = {"Version": "2012-10-17", "Statement": writer["Statement"] + protection["Statement"]}
        yield TaskPrincipals(
            with_protection=create_principal(admin, "task", both),
            writer_only=create_principal(admin, "writer", writer),
        )


def _denied(call: Any, **kwargs: Any) -> bool:
    """Whether moto refused the call for IAM. moto answers an ECS (JSON protocol) denial
    with a 403 and an XML body botocore cannot parse (its code reads "403"), and an
    authorised call to an action it does not implement with a 500."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    denied = status == 403 and "AccessDenied" in str(response["Error"].get("Message"))
    assert denied or status == 500, response  # nothing else is expected from moto here
    return denied


def test_moto_enforcing_refuses_the_task_every_other_ecs_action(principals: TaskPrincipals) -> None:
    ecs = principals.with_protection.client("ecs")
    calls = {
        "StopTask": (ecs.stop_task, {"cluster": CLUSTER, "task": OUR_TASK}),
        "UpdateService": (
            ecs.update_service,
            {"cluster": CLUSTER, "service": "central-llm-service", "desiredCount": 0},
        ),
        "ListTasks": (ecs.list_tasks, {"cluster": CLUSTER}),
        "RunTask": (ecs.run_task, {"cluster": CLUSTER, "taskDefinition": "x"}),
        "DescribeTasks": (ecs.describe_tasks, {"cluster": CLUSTER, "tasks": [OUR_TASK]}),
    }
    refused = {name: _denied(call, **kwargs) for name, (call, kwargs) in calls.items()}
    assert all(refused.values()), refused


def test_moto_enforcing_authorises_task_protection_only_with_its_policy(
    principals: TaskPrincipals,
) -> None:
    """Authorised, moto answers 500 (it implements neither action); refused, 403."""
    update = {"cluster": CLUSTER, "tasks": [OUR_TASK], "protectionEnabled": True}
    get = {"cluster": CLUSTER, "tasks": [OUR_TASK]}
    on = principals.with_protection.client("ecs")
    assert not _denied(on.update_task_protection, **update)
    assert not _denied(on.get_task_protection, **get)
    off = principals.writer_only.client("ecs")
    assert _denied(off.update_task_protection, **update)
    assert _denied(off.get_task_protection, **get)
