"""Task scale-in protection in the stack: the switch, the task role's permission, the setting.

The sidecar asks the ECS agent to protect its task while requests are in
flight (sidecar_audit/task_protection.py; docs/observability.md). The agent
calls ECS's UpdateTaskProtection with the task role's credentials, so the task
role needs `ecs:UpdateTaskProtection` (and `ecs:GetTaskProtection`, for an
operator's look through the agent) on the tasks of this cluster: the policy
file `ecs/policies/ecs-task-protection.json`, attached only while the
`TaskProtection` parameter is `true`. IAM has no variable naming the calling
task, so "the tasks of this cluster" is as narrow as a statement can be. The
sidecar's `TASK_PROTECTION` setting takes the parameter's value
(`ecs/task-definition.json`), so switching it off removes both together.
"""

from __future__ import annotations

from typing import Any

from ecs.stackgen.cfn import Json, ref, substitute

POLICY_NAME = "ecs-task-protection"


def protection_parameters() -> dict[str, Json]:
    return {
        "TaskProtection": {
            "Type": "String",
            "Default": "true",
            "AllowedValues": ["true", "false"],
            "Description": "Protect a task from scale-in while it serves (and for the "
            "sidecar's quiet period after); false: no protection, no permission",
        }
    }


def protection_conditions() -> dict[str, Json]:
    return {"HasTaskProtection": {"Fn::Equals": [ref("TaskProtection"), "true"]}}


def protection_resources(policy: dict[str, Any]) -> dict[str, Json]:
    return {
        "TaskProtectionPolicy": {
            "Type": "AWS::IAM::Policy",
            "Condition": "HasTaskProtection",
            "Properties": {
                "PolicyName": POLICY_NAME,
                "PolicyDocument": substitute(policy),
                "Roles": [ref("TaskRole")],
            },
        }
    }
