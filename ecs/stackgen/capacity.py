"""GPU capacity that heals itself: launch template, Auto Scaling group, ECS capacity provider.

The launch template starts the latest ECS-optimized GPU AMI (read from its
public SSM parameter at each stack update, so an update rolls the AMI) with
the hosts' instance profile and security group, IMDSv2 only, and an ECS
agent configuration that joins the cluster, keeps GPU support on, lets
containers stop for 2 minutes and blocks tasks from the host's instance
metadata (`ECS_AWSVPC_BLOCK_IMDS`: awsvpc tasks use their task role, never the
host's). The group starts at zero hosts: the capacity provider's managed
scaling adds a host when a task cannot be placed and removes an idle one;
managed termination protection keeps scale-in off hosts that run tasks, and
managed draining moves tasks off a host before a replacement (AMI roll,
health failure) terminates it. If a host dies, the group starts another and
ECS places the task there.

`scripts/launch-prod-ecr.sh` remains the manual path (a host started outside
the group, with the same agent configuration).
"""

from __future__ import annotations

from ecs.stackgen.cfn import Json, get_att, ref, sub

GPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
ECS_AGENT_CONFIG = (
    "#!/bin/bash\n"
    "cat >>/etc/ecs/ecs.config <<'ECSCONFIG'\n"
    "ECS_CLUSTER=${ClusterName}\n"
    "ECS_ENABLE_GPU_SUPPORT=true\n"
    "ECS_AWSVPC_BLOCK_IMDS=true\n"
    "ECS_CONTAINER_STOP_TIMEOUT=2m\n"
    "ECS_IMAGE_PULL_BEHAVIOR=prefer-cached\n"
    "ECS_ENABLE_CONTAINER_METADATA=true\n"
    "ECSCONFIG\n"
)


def capacity_parameters() -> dict[str, Json]:
    return {
        "GpuAmiId": {
            "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
            "Default": GPU_AMI_PARAMETER,
            "Description": "ECS-optimized GPU AMI (SSM parameter; resolved at each update)",
        },
        "GpuInstanceType": {
            "Type": "String",
            "Default": "g5.xlarge",
            "Description": "GPU host instance type (one A10G, 24 GB)",
        },
        "GpuHostsMax": {
            "Type": "Number",
            "Default": 2,
            "MinValue": 1,
            "Description": "Most GPU hosts the group may run (deploys at 200 % need 2)",
        },
        "GpuRootVolumeGb": {
            "Type": "Number",
            "Default": 200,
            "MinValue": 100,
            "Description": "Root volume of a GPU host (images with the model are large)",
        },
    }


def capacity_resources() -> dict[str, Json]:
    return {
        "GpuLaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": ref("GpuAmiId"),
                    "InstanceType": ref("GpuInstanceType"),
                    "IamInstanceProfile": {"Arn": get_att("InstanceProfile", "Arn")},
                    "SecurityGroupIds": [ref("InstanceSecurityGroup")],
                    "MetadataOptions": {
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 2,
                        "HttpEndpoint": "enabled",
                    },
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": {
                                "VolumeSize": ref("GpuRootVolumeGb"),
                                "VolumeType": "gp3",
                                "Encrypted": True,
                                "DeleteOnTermination": True,
                            },
                        }
                    ],
                    "Monitoring": {"Enabled": True},
                    "UserData": {"Fn::Base64": sub(ECS_AGENT_CONFIG)},
                    "TagSpecifications": [
                        {
                            "ResourceType": "instance",
                            "Tags": [
                                {"Key": "Name", "Value": sub("${ClusterName}-gpu")},
                                {"Key": "central-llm:cluster", "Value": ref("ClusterName")},
                            ],
                        }
                    ],
                }
            },
        },
        "GpuAutoScalingGroup": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "MinSize": "0",
                "MaxSize": ref("GpuHostsMax"),
                "VPCZoneIdentifier": ref("SubnetIds"),
                "LaunchTemplate": {
                    "LaunchTemplateId": ref("GpuLaunchTemplate"),
                    "Version": get_att("GpuLaunchTemplate", "LatestVersionNumber"),
                },
                "NewInstancesProtectedFromScaleIn": True,
                "HealthCheckType": "EC2",
                "HealthCheckGracePeriod": 300,
                "Tags": [
                    {
                        "Key": "AmazonECSManaged",
                        "Value": "",
                        "PropagateAtLaunch": True,
                    }
                ],
            },
        },
        "GpuCapacityProvider": {
            "Type": "AWS::ECS::CapacityProvider",
            "Properties": {
                "AutoScalingGroupProvider": {
                    "AutoScalingGroupArn": ref("GpuAutoScalingGroup"),
                    "ManagedScaling": {
                        "Status": "ENABLED",
                        "TargetCapacity": 100,
                        "MinimumScalingStepSize": 1,
                        "MaximumScalingStepSize": 1,
                        "InstanceWarmupPeriod": 300,
                    },
                    "ManagedTerminationProtection": "ENABLED",
                    "ManagedDraining": "ENABLED",
                }
            },
        },
        "ClusterCapacityProviders": {
            "Type": "AWS::ECS::ClusterCapacityProviderAssociations",
            "Properties": {
                "Cluster": ref("Cluster"),
                "CapacityProviders": [ref("GpuCapacityProvider")],
                "DefaultCapacityProviderStrategy": [
                    {"CapacityProvider": ref("GpuCapacityProvider"), "Weight": 1, "Base": 0}
                ],
            },
        },
    }
