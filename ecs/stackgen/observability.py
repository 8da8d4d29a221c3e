"""GPU and inference observability: exporters, collectors, DataDog labels, scaling, alarms.

Where each piece runs, and why:

- **DCGM exporter: an ECS daemon service, one task per GPU host** (host
  network, :9400). ECS hands a GPU only to a container that reserves it, and
  it hands each GPU to one task: an exporter beside vLLM in the service task
  would see no device, and one that reserved a GPU would take it from vLLM.
  The daemon reserves none and asks the NVIDIA runtime for every device
  (`NVIDIA_VISIBLE_DEVICES=all`, read-only NVML access), which works on the
  ECS GPU AMI because its Docker default runtime is `nvidia`.
- **Collector: AWS Distro for OpenTelemetry (ADOT)**, twice: in the service
  task (non-essential) it scrapes vLLM's `/metrics` and the sidecar's metrics
  port on the task's loopback; in the daemon task it scrapes DCGM on the host's
  loopback. One collector cannot reach both: awsvpc tasks have their own
  network namespace, the hosts' security group admits nothing, and
  `ECS_AWSVPC_BLOCK_IMDS` hides the host's address from the task. ADOT rather
  than the CloudWatch agent because one pipeline does all three jobs: Prometheus
  relabelling (vLLM's gauges renamed to stable names), EMF to CloudWatch, and
  Prometheus remote-write with SigV4 to Amazon Managed Prometheus; the
  CloudWatch agent drops Prometheus histograms on the EMF path.
- **DataDog** (parameter): Autodiscovery docker labels (OpenMetrics check) on
  the sidecar (:9464), on the task's collector (:9465, its Prometheus exporter
  re-serving vLLM's metrics, which never leave the task's loopback) and on the
  DCGM exporter (:9400); the task's group then admits those two ports from the
  hosts' group, where a DataDog agent daemon runs.
- **Scaling**: target tracking on `llm_engine_requests_waiting` (vLLM's
  waiting requests, EMF from the task's collector, dimension ServiceName, so
  the Average statistic is per task); the capacity provider adds a GPU host for
  a task that cannot be placed. A task stopped by scale-in is drained (NLB
  deregistration delay, then SIGTERM and the sidecar's grace), so streams in
  flight finish: docs/observability.md explains why that, not task scale-in
  protection, guards them.
- **Alarms** on the existing topic: GPU XID errors, GPU memory near full,
  TTFT p99 (the sidecar's EMF distribution) and the error rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ecs.stackgen.alarms import alarm
from ecs.stackgen.cfn import Json, get_att, ref, sub

INFERENCE_NAMESPACE = (
    "CentralLLM/Inference"  # the sidecar's EMF line (metrics.py) and the collector
)
GPU_NAMESPACE = "CentralLLM/GPU"
COLLECTOR_CONTAINER = "otel-collector"
COLLECTOR_PROMETHEUS_PORT = 9465
SIDECAR_METRICS_PORT = 9464
VLLM_PORT = 8001
DCGM_PORT = 9400
STABLE_NAMES_FILE = Path(__file__).resolve().parents[2] / "observability" / "stable-names.json"
# What the collectors turn into CloudWatch metrics (everything else stays in Prometheus).
ENGINE_METRICS = (
    "llm_engine_requests_waiting",
    "llm_engine_requests_running",
    "llm_engine_kv_cache_usage_ratio",
)
GPU_METRICS = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK",
)


def stable_names() -> dict[str, str]:
    """vLLM metric name -> stable name (observability/stable-names.json)."""
    renames: dict[str, str] = json.loads(STABLE_NAMES_FILE.read_text())["renames"]
    return renames


def _number(default: float, description: str, minimum: float = 0) -> Json:
    return {"Type": "Number", "Default": default, "MinValue": minimum, "Description": description}


def observability_parameters() -> dict[str, Json]:
    return {
        "CollectorImage": {
            "Type": "String",
            "Default": "public.ecr.aws/aws-observability/aws-otel-collector:v0.45.1",
            "Description": "ADOT collector image (task and GPU daemon)",
        },
        "DcgmExporterImage": {
            "Type": "String",
            "Default": "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
            "Description": "NVIDIA DCGM exporter image (GPU daemon)",
        },
        "PrometheusRemoteWriteUrl": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^$|^https://aps-workspaces\.[a-z0-9-]+\.amazonaws\.com/"
            r"workspaces/ws-[A-Za-z0-9-]+/api/v1/remote_write$",
            "Description": "Amazon Managed Prometheus remote-write URL; empty: CloudWatch only",
        },
        "DataDogAutodiscovery": {
            "Type": "String",
            "Default": "false",
            "AllowedValues": ["false", "true"],
            "Description": "Docker labels for a DataDog agent's OpenMetrics check",
        },
        "ScalingMinTasks": _number(1, "Fewest tasks target tracking keeps", 0),
        "ScalingMaxTasks": _number(2, "Most tasks (each needs a GPU host; <= GpuHostsMax)", 1),
        "ScalingWaitingPerTask": _number(
            4, "Target of vLLM's waiting requests per task (docs/observability.md)", 1
        ),
        "ScaleOutCooldownS": _number(300, "Seconds between scale-outs (a host + model load)"),
        "ScaleInCooldownS": _number(1800, "Seconds between scale-ins (hosts are slow to return)"),
        "AlarmTtftP99Seconds": _number(5, "TTFT p99 above this (5 min, 3 of 3) alarms"),
        "AlarmErrorRatePercent": _number(5, "Share of 5xx / failed generations that alarms", 0),
        "AlarmGpuMemoryPercent": _number(
            97, "GPU memory use that alarms (vLLM reserves 90 % at start)", 1
        ),
    }


def observability_conditions() -> dict[str, Json]:
    return {
        "HasRemoteWrite": {"Fn::Not": [{"Fn::Equals": [ref("PrometheusRemoteWriteUrl"), ""]}]},
        "HasDataDog": {"Fn::Equals": [ref("DataDogAutodiscovery"), "true"]},
    }


# --- collector configuration -------------------------------------------------------


def _rename_rules() -> list[dict[str, Any]]:
    return [
        {
            "source_labels": ["__name__"],
            "regex": old,
            "target_label": "__name__",
            "replacement": new,
        }
        for old, new in stable_names().items()
    ]


_SERVICE_LABEL = {"target_label": "ServiceName", "replacement": "${ServiceName}"}


def _scrape(job: str, port: int, extra_rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "job_name": job,
        "scrape_interval": "15s",
        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        "metric_relabel_configs": [*extra_rules, _SERVICE_LABEL],
    }


def collector_config(
    jobs: list[dict[str, Any]], namespace: str, selectors: tuple[str, ...], remote_write: bool
) -> str:
    """ADOT configuration (YAML) with `${...}` left for Fn::Sub: scrape `jobs`,
    EMF for `selectors` under `namespace`, a Prometheus endpoint for DataDog,
    optionally remote-write to AMP."""
    exporters: dict[str, Any] = {
        "awsemf": {
            "namespace": namespace,
            "log_group_name": "${MetricsLogGroup}",
            "region": "${AWS::Region}",
            "dimension_rollup_option": "NoDimensionRollup",
            "metric_declarations": [
                {"dimensions": [["ServiceName"]], "metric_name_selectors": list(selectors)}
            ],
        },
        "prometheus": {"endpoint": f"0.0.0.0:{COLLECTOR_PROMETHEUS_PORT}"},
    }
    extensions: dict[str, Any] = {"health_check": {}}
    if remote_write:
        exporters["prometheusremotewrite"] = {
            "endpoint": "${PrometheusRemoteWriteUrl}",
            "auth": {"authenticator": "sigv4auth"},
        }
        extensions["sigv4auth"] = {"region": "${AWS::Region}", "service": "aps"}
    config = {
        "extensions": extensions,
        "receivers": {"prometheus": {"config": {"scrape_configs": jobs}}},
        "processors": {"batch/metrics": {"timeout": "30s"}},
        "exporters": exporters,
        "service": {
            "extensions": list(extensions),
            "pipelines": {
                "metrics": {
                    "receivers": ["prometheus"],
                    "processors": ["batch/metrics"],
                    "exporters": list(exporters),
                }
            },
        },
    }
    # Prometheus's `$1` style references need no escaping: Fn::Sub only reads `${`.
    # Flow style on one line: a YAML document that is also compact in the template.
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=True, width=1 << 20)


def task_collector_jobs() -> list[dict[str, Any]]:
    return [
        _scrape("vllm", VLLM_PORT, _rename_rules()),
        _scrape("sidecar", SIDECAR_METRICS_PORT, []),
    ]


def daemon_collector_jobs() -> list[dict[str, Any]]:
    return [_scrape("dcgm", DCGM_PORT, [])]


def _config_value(jobs: list[dict[str, Any]], namespace: str, selectors: tuple[str, ...]) -> Json:
    return {
        "Fn::If": [
            "HasRemoteWrite",
            sub(collector_config(jobs, namespace, selectors, True)),
            sub(collector_config(jobs, namespace, selectors, False)),
        ]
    }


def _openmetrics_labels(port: int, namespace: str, metrics: list[str]) -> Json:
    check = {
        "openmetrics": {
            "init_config": {},
            "instances": [
                {
                    "openmetrics_endpoint": f"http://%%host%%:{port}/metrics",
                    "namespace": namespace,
                    "metrics": metrics,
                }
            ],
        }
    }
    return {
        "Fn::If": [
            "HasDataDog",
            {"com.datadoghq.ad.checks": json.dumps(check, sort_keys=True)},
            ref("AWS::NoValue"),
        ]
    }


def _log_options(prefix: str) -> Json:
    return {
        "LogDriver": "awslogs",
        "Options": {
            "awslogs-group": ref("ServiceLogGroupName"),
            "awslogs-region": ref("AWS::Region"),
            "awslogs-stream-prefix": prefix,
            "mode": "non-blocking",
            "max-buffer-size": "4m",
        },
    }


def _collector_container(config: Json, prefix: str, labels: Json | None) -> Json:
    container: Json = {
        "Name": COLLECTOR_CONTAINER,
        "Image": ref("CollectorImage"),
        "Essential": False,
        "Cpu": 128,
        "MemoryReservation": 128,
        "Memory": 512,
        "Environment": [{"Name": "AOT_CONFIG_CONTENT", "Value": config}],
        "ReadonlyRootFilesystem": True,
        "LogConfiguration": _log_options(prefix),
    }
    if labels is not None:
        container["DockerLabels"] = labels
    return container


def observe_task_definition(properties: Json) -> Json:
    """The service's task definition (CloudFormation shape) with the collector beside
    vLLM and the sidecar, and the DataDog labels; vLLM and the sidecar are unchanged
    apart from the sidecar's labels."""
    containers = []
    for container in properties["ContainerDefinitions"]:
        if container["Name"] == "audit-sidecar":
            container = {
                **container,
                "DockerLabels": _openmetrics_labels(
                    SIDECAR_METRICS_PORT,
                    "central_llm",
                    ["llm_sidecar_.*", "llm_inference_.*", "llm_audit_.*"],
                ),
            }
        containers.append(container)
    collector = _collector_container(
        _config_value(task_collector_jobs(), INFERENCE_NAMESPACE, ENGINE_METRICS),
        "collector",
        _openmetrics_labels(COLLECTOR_PROMETHEUS_PORT, "vllm", ["llm_engine_.*", "vllm:.*"]),
    )
    return {**properties, "ContainerDefinitions": [*containers, collector]}


# --- resources ------------------------------------------------------------------


def _gpu_daemon() -> dict[str, Json]:
    dcgm: Json = {
        "Name": "dcgm-exporter",
        "Image": ref("DcgmExporterImage"),
        "Essential": True,
        "Cpu": 128,
        "MemoryReservation": 256,
        "Memory": 1024,
        "Environment": [
            {"Name": "NVIDIA_VISIBLE_DEVICES", "Value": "all"},
            {"Name": "NVIDIA_DRIVER_CAPABILITIES", "Value": "utility"},
        ],
        "DockerLabels": _openmetrics_labels(DCGM_PORT, "dcgm", ["DCGM_FI_.*"]),
        "LogConfiguration": _log_options("dcgm"),
    }
    collector = _collector_container(
        _config_value(daemon_collector_jobs(), GPU_NAMESPACE, GPU_METRICS), "gpu-collector", None
    )
    return {
        "GpuMetricsTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "DependsOn": ["ServiceLogGroup"],
            "Properties": {
                "Family": sub("${ServiceName}-gpu-metrics"),
                "RequiresCompatibilities": ["EC2"],
                "NetworkMode": "host",
                "TaskRoleArn": get_att("MetricsTaskRole", "Arn"),
                "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
                "ContainerDefinitions": [dcgm, collector],
            },
        },
        "GpuMetricsDaemon": {
            "Type": "AWS::ECS::Service",
            "DependsOn": ["ClusterCapacityProviders"],
            "Properties": {
                "ServiceName": sub("${ServiceName}-gpu-metrics"),
                "Cluster": ref("Cluster"),
                "TaskDefinition": ref("GpuMetricsTaskDefinition"),
                "LaunchType": "EC2",
                "SchedulingStrategy": "DAEMON",
                "EnableECSManagedTags": True,
                "PropagateTags": "SERVICE",
            },
        },
    }


def _emf_policy() -> Json:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteEmfMetrics",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                "Resource": sub(
                    "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}"
                    ":log-group:${MetricsLogGroup}:*"
                ),
            }
        ],
    }


def _roles() -> dict[str, Json]:
    return {
        # The collector shares the service task's role (ECS has one role per task).
        "TaskMetricsPolicy": {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": "task-metrics-writer",
                "Roles": [ref("TaskRole")],
                "PolicyDocument": _emf_policy(),
            },
        },
        "MetricsRemoteWritePolicy": {
            "Type": "AWS::IAM::Policy",
            "Condition": "HasRemoteWrite",
            "Properties": {
                "PolicyName": "metrics-remote-write",
                "Roles": [ref("TaskRole"), ref("MetricsTaskRole")],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "RemoteWriteToManagedPrometheus",
                            "Effect": "Allow",
                            "Action": "aps:RemoteWrite",
                            "Resource": sub(
                                "arn:${AWS::Partition}:aps:${AWS::Region}:${AWS::AccountId}"
                                ":workspace/*"
                            ),
                        }
                    ],
                },
            },
        },
        "MetricsTaskRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {
                                "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}
                            },
                        }
                    ],
                },
                "Policies": [{"PolicyName": "gpu-metrics-writer", "PolicyDocument": _emf_policy()}],
            },
        },
    }


def _datadog_ingress() -> dict[str, Json]:
    def rule(port: int, what: str) -> Json:
        return {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "HasDataDog",
            "Properties": {
                "GroupId": ref("TaskSecurityGroup"),
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "SourceSecurityGroupId": ref("InstanceSecurityGroup"),
                "Description": f"DataDog agent on the GPU hosts scrapes {what}",
            },
        }

    return {
        "TaskIngressSidecarMetricsFromHosts": rule(SIDECAR_METRICS_PORT, "the sidecar's metrics"),
        "TaskIngressCollectorMetricsFromHosts": rule(
            COLLECTOR_PROMETHEUS_PORT, "vLLM's metrics via the collector"
        ),
    }


def _scaling() -> dict[str, Json]:
    return {
        "ServiceScalableTarget": {
            "Type": "AWS::ApplicationAutoScaling::ScalableTarget",
            "Properties": {
                "ServiceNamespace": "ecs",
                "ScalableDimension": "ecs:service:DesiredCount",
                "ResourceId": sub("service/${Cluster}/${Service.Name}"),
                "MinCapacity": ref("ScalingMinTasks"),
                "MaxCapacity": ref("ScalingMaxTasks"),
                "RoleARN": sub(
                    "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/aws-service-role/"
                    "ecs.application-autoscaling.amazonaws.com/"
                    "AWSServiceRoleForApplicationAutoScaling_ECSService"
                ),
            },
        },
        "ServiceWaitingRequestsScaling": {
            "Type": "AWS::ApplicationAutoScaling::ScalingPolicy",
            "Properties": {
                "PolicyName": sub("${ServiceName}-waiting-requests-per-task"),
                "PolicyType": "TargetTrackingScaling",
                "ScalingTargetId": ref("ServiceScalableTarget"),
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue": ref("ScalingWaitingPerTask"),
                    "ScaleOutCooldown": ref("ScaleOutCooldownS"),
                    "ScaleInCooldown": ref("ScaleInCooldownS"),
                    "CustomizedMetricSpecification": {
                        "Namespace": INFERENCE_NAMESPACE,
                        "MetricName": "llm_engine_requests_waiting",
                        "Dimensions": [{"Name": "ServiceName", "Value": ref("ServiceName")}],
                        "Statistic": "Average",
                    },
                },
            },
        },
    }


def _alarm(description: str, threshold: Json, periods: int, **metric: Json) -> Json:
    return alarm(
        description,
        metric,
        threshold=threshold,
        periods=periods,
        missing="notBreaching",
        datapoints=periods,
    )


def _stat(metric_id: str, namespace: str, name: str, stat: str, period: int) -> Json:
    return {
        "Id": metric_id,
        "ReturnData": False,
        "MetricStat": {
            "Metric": {
                "Namespace": namespace,
                "MetricName": name,
                "Dimensions": [{"Name": "ServiceName", "Value": ref("ServiceName")}],
            },
            "Period": period,
            "Stat": stat,
        },
    }


def _service_dimension() -> list[Json]:
    return [{"Name": "ServiceName", "Value": ref("ServiceName")}]


def _alarms() -> dict[str, Json]:
    return {
        "GpuXidErrorAlarm": _alarm(
            "A GPU reported an XID error (DCGM_FI_DEV_XID_ERRORS > 0): driver or hardware "
            "fault; check the host's dmesg and replace the host if it repeats",
            0,
            1,
            Namespace=GPU_NAMESPACE,
            MetricName="DCGM_FI_DEV_XID_ERRORS",
            Dimensions=_service_dimension(),
            Statistic="Maximum",
            Period=60,
        ),
        "GpuMemoryNearFullAlarm": _alarm(
            "GPU memory use above AlarmGpuMemoryPercent on a host (vLLM reserves its share "
            "at start; more means another process on the GPU or a leak)",
            ref("AlarmGpuMemoryPercent"),
            5,
            Metrics=[
                _stat("used", GPU_NAMESPACE, "DCGM_FI_DEV_FB_USED", "Maximum", 60),
                _stat("free", GPU_NAMESPACE, "DCGM_FI_DEV_FB_FREE", "Minimum", 60),
                {
                    "Id": "usedPercent",
                    "Label": "GPU memory used (%), the fullest GPU",
                    # Same GPU model on every host: max(used) + min(free) is its size.
                    "Expression": "100 * used / (used + free)",
                    "ReturnData": True,
                },
            ],
        ),
        "TtftP99Alarm": _alarm(
            "Time to first token p99 (sidecar, all generating routes) above "
            "AlarmTtftP99Seconds for 15 minutes: queueing (see waiting requests) or a slow GPU",
            ref("AlarmTtftP99Seconds"),
            3,
            Namespace=INFERENCE_NAMESPACE,
            MetricName="TimeToFirstToken",
            Dimensions=_service_dimension(),
            ExtendedStatistic="p99",
            Period=300,
        ),
        "InferenceErrorRateAlarm": _alarm(
            "Share of generating requests answered 5xx or failed upstream above "
            "AlarmErrorRatePercent for 10 minutes",
            ref("AlarmErrorRatePercent"),
            2,
            Metrics=[
                _stat("errors", INFERENCE_NAMESPACE, "InferenceErrors", "Sum", 300),
                _stat("requests", INFERENCE_NAMESPACE, "InferenceRequests", "Sum", 300),
                {
                    "Id": "errorRate",
                    "Label": "failed generations (%)",
                    "Expression": "IF(requests > 0, 100 * errors / requests, 0)",
                    "ReturnData": True,
                },
            ],
        ),
    }


def observability_resources() -> dict[str, Json]:
    return {
        "MetricsLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": sub("/central-llm/${ServiceName}/metrics"),
                "RetentionInDays": 30,
            },
        },
        **_roles(),
        **_gpu_daemon(),
        **_datadog_ingress(),
        **_scaling(),
        **_alarms(),
    }


__all__ = [
    "observability_conditions",
    "observability_parameters",
    "observability_resources",
    "observe_task_definition",
    "stable_names",
]
