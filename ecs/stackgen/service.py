"""The ECS service: image repositories, roles, task definition, cluster, service and NLB.

The task definition is `ecs/task-definition.json` converted to CloudFormation's
spelling, plus the non-essential metrics collector and DataDog labels of
observability.py. The GPU hosts come from the capacity provider
(capacity.py); the service places its task through the provider's strategy.

The NLB is internal, has its own security group and takes traffic only from
API Gateway's VPC link (PrivateLink traffic; the group has no inbound rule,
so nothing else in the VPC reaches it and the edge's checks cannot be
bypassed). The task's group admits port 8000 only from the NLB's group. The
TCP listener's idle timeout is the longest generation the edge allows, so a
silent non-streamed generation is never cut. The target group keeps the
original health check (HTTP GET /health on port 8000 every 30 s, 5 s timeout,
3 tries). Drain: ECS deregisters a stopping task, waits the deregistration
delay (open connections keep flowing), then sends SIGTERM and the sidecar lets
streams finish for SHUTDOWN_GRACE_S; the delay is the longest generation less
that grace, so a stream started just before the stop can finish.
"""

from __future__ import annotations

import json
from typing import Any

from ecs.stackgen.cfn import Json, pascal_keys, ref, sub, substitute, tags
from ecs.stackgen.edge import LONGEST_GENERATION_S
from ecs.stackgen.observability import observe_task_definition

SIDECAR_CONTAINER = "audit-sidecar"
SIDECAR_PORT = 8000
HEALTH_CHECK_GRACE_S = 900


def shutdown_grace_s(task_definition: dict[str, Any]) -> int:
    """The sidecar's SHUTDOWN_GRACE_S as the task definition sets it."""
    for container in task_definition["containerDefinitions"]:
        if container["name"] == SIDECAR_CONTAINER:
            env = {e["name"]: e["value"] for e in container.get("environment", [])}
            return int(float(env["SHUTDOWN_GRACE_S"]))
    raise ValueError(f"no {SIDECAR_CONTAINER} container in the task definition")


def deregistration_delay_s(task_definition: dict[str, Any]) -> int:
    """Delay + the sidecar's grace = the longest generation the edge lets run."""
    return LONGEST_GENERATION_S - shutdown_grace_s(task_definition)


_ECR_LIFECYCLE = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "Keep the 30 most recent images (rollback targets)",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 30},
            "action": {"type": "expire"},
        }
    ]
}


def _repository(name_parameter: str) -> Json:
    return {
        "Type": "AWS::ECR::Repository",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": {
            "RepositoryName": ref(name_parameter),
            "ImageTagMutability": "IMMUTABLE",
            "ImageScanningConfiguration": {"ScanOnPush": True},
            "EncryptionConfiguration": {"EncryptionType": "AES256"},
            "LifecyclePolicy": {"LifecyclePolicyText": json.dumps(_ECR_LIFECYCLE, sort_keys=True)},
        },
    }


def _pull_through_cache() -> Json:
    """Docker Hub through ECR (authenticated, cached, scanned) for the builds' base images."""
    return {
        "Type": "AWS::ECR::PullThroughCacheRule",
        "Condition": "HasDockerHubCredential",
        "Properties": {
            "EcrRepositoryPrefix": "docker-hub",
            "UpstreamRegistry": "docker-hub",
            "UpstreamRegistryUrl": "registry-1.docker.io",
            "CredentialArn": ref("DockerHubCredentialArn"),
        },
    }


def _ecs_tasks_trust() -> Json:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                    "ArnLike": {
                        "aws:SourceArn": sub(
                            "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*"
                        )
                    },
                },
            }
        ],
    }


def task_role(policy_name: str, policy: dict[str, Any]) -> Json:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _ecs_tasks_trust(),
            "Policies": [{"PolicyName": policy_name, "PolicyDocument": substitute(policy)}],
        },
    }


def _hosts() -> dict[str, Json]:
    return {
        "InstanceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "ManagedPolicyArns": [
                    sub(
                        "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
                    ),
                    sub("arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"),
                ],
            },
        },
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [ref("InstanceRole")]},
        },
        "InstanceSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Central LLM GPU hosts: no inbound (SSM), outbound to AWS",
                "VpcId": ref("VpcId"),
                "SecurityGroupEgress": [
                    {"IpProtocol": "-1", "CidrIp": "0.0.0.0/0", "Description": "AWS APIs"}
                ],
                "Tags": tags(Name="central-llm-gpu-host"),
            },
        },
    }


def _security_groups() -> dict[str, Json]:
    return {
        "LoadBalancerSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Central LLM NLB: API Gateway VPC link only; to the tasks",
                "VpcId": ref("VpcId"),
                "SecurityGroupEgress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": SIDECAR_PORT,
                        "ToPort": SIDECAR_PORT,
                        "DestinationSecurityGroupId": ref("TaskSecurityGroup"),
                        "Description": "Traffic and health checks to the sidecars",
                    }
                ],
                "Tags": tags(Name="central-llm-nlb"),
            },
        },
        "TaskSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Central LLM tasks: sidecar port from the NLB only",
                "VpcId": ref("VpcId"),
                "SecurityGroupEgress": [
                    {"IpProtocol": "-1", "CidrIp": "0.0.0.0/0", "Description": "S3, ECR, logs"}
                ],
                "Tags": tags(Name="central-llm-task"),
            },
        },
        "TaskIngressFromLoadBalancer": {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {
                "GroupId": ref("TaskSecurityGroup"),
                "IpProtocol": "tcp",
                "FromPort": SIDECAR_PORT,
                "ToPort": SIDECAR_PORT,
                "SourceSecurityGroupId": ref("LoadBalancerSecurityGroup"),
                "Description": "NLB traffic and health checks",
            },
        },
    }


def _networking(task_definition: dict[str, Any]) -> dict[str, Json]:
    return {
        **_security_groups(),
        "LoadBalancer": {
            "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "Properties": {
                "Type": "network",
                "Scheme": "internal",
                "Subnets": ref("SubnetIds"),
                "SecurityGroups": [ref("LoadBalancerSecurityGroup")],
                # PrivateLink (the VPC link) is the one way in; the group has no inbound rule.
                "EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic": "off",
                "LoadBalancerAttributes": [
                    {"Key": "load_balancing.cross_zone.enabled", "Value": "true"}
                ],
            },
        },
        "TargetGroup": {
            "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
            "Properties": {
                "Name": ref("TargetGroupName"),
                "TargetType": "ip",
                "Protocol": "TCP",
                "Port": SIDECAR_PORT,
                "VpcId": ref("VpcId"),
                "HealthCheckEnabled": True,
                "HealthCheckProtocol": "HTTP",
                "HealthCheckPort": "traffic-port",
                "HealthCheckPath": "/health",
                "HealthCheckIntervalSeconds": 30,
                "HealthCheckTimeoutSeconds": 5,
                "HealthyThresholdCount": 3,
                "UnhealthyThresholdCount": 3,
                "Matcher": {"HttpCode": "200"},
                "TargetGroupAttributes": [
                    {
                        "Key": "deregistration_delay.timeout_seconds",
                        "Value": str(deregistration_delay_s(task_definition)),
                    },
                    {
                        "Key": "deregistration_delay.connection_termination.enabled",
                        "Value": "false",
                    },
                ],
            },
        },
        "Listener": {
            "Type": "AWS::ElasticLoadBalancingV2::Listener",
            "Properties": {
                "LoadBalancerArn": ref("LoadBalancer"),
                "Port": ref("ListenerPort"),
                "Protocol": "TCP",
                "DefaultActions": [{"Type": "forward", "TargetGroupArn": ref("TargetGroup")}],
                "ListenerAttributes": [
                    {"Key": "tcp.idle_timeout.seconds", "Value": str(LONGEST_GENERATION_S)}
                ],
            },
        },
    }


def _service() -> Json:
    return {
        "Type": "AWS::ECS::Service",
        "DependsOn": ["Listener", "ClusterCapacityProviders"],
        "Properties": {
            "ServiceName": ref("ServiceName"),
            "Cluster": ref("Cluster"),
            "TaskDefinition": ref("TaskDefinition"),
            "CapacityProviderStrategy": [
                {"CapacityProvider": ref("GpuCapacityProvider"), "Weight": 1, "Base": 0}
            ],
            "DesiredCount": ref("DesiredCount"),
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": ref("SubnetIds"),
                    "SecurityGroups": [ref("TaskSecurityGroup")],
                }
            },
            "LoadBalancers": [
                {
                    "ContainerName": SIDECAR_CONTAINER,
                    "ContainerPort": SIDECAR_PORT,
                    "TargetGroupArn": ref("TargetGroup"),
                }
            ],
            "HealthCheckGracePeriodSeconds": HEALTH_CHECK_GRACE_S,
            "DeploymentConfiguration": {
                "MinimumHealthyPercent": ref("DeployMinimumHealthyPercent"),
                "MaximumPercent": ref("DeployMaximumPercent"),
                "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
            },
            "EnableECSManagedTags": True,
            "PropagateTags": "SERVICE",
        },
    }


def service_resources(
    task_definition: dict[str, Any],
    task_policy: dict[str, Any],
    execution_policy: dict[str, Any],
) -> dict[str, Json]:
    return {
        "VllmRepository": _repository("VllmRepositoryName"),
        "SidecarRepository": _repository("SidecarRepositoryName"),
        "DockerHubPullThroughCache": _pull_through_cache(),
        "ServiceLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {"LogGroupName": ref("ServiceLogGroupName"), "RetentionInDays": 90},
        },
        "Cluster": {
            "Type": "AWS::ECS::Cluster",
            "Properties": {
                "ClusterName": ref("ClusterName"),
                "ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}],
            },
        },
        "TaskRole": task_role("ecs-task-audit-writer", task_policy),
        "ExecutionRole": task_role("ecs-task-execution", execution_policy),
        "TaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "DependsOn": ["ServiceLogGroup", "VllmRepository", "SidecarRepository"],
            "Properties": observe_task_definition(pascal_keys(substitute(task_definition))),
        },
        **_hosts(),
        **_networking(task_definition),
        "Service": _service(),
    }
