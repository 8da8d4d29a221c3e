"""The API edge, the NLB's reachability and drain, and the GPU capacity, read from the template.

What moto's CloudFormation accepts is deployed by test_stack_moto.py; what it
does not model (integration settings, request validation, security group
semantics, capacity provider behaviour) is pinned here on the template.
"""

from __future__ import annotations

import json
from typing import Any

from ecs.stackgen.edge import LONGEST_GENERATION_S
from tests.deploy.conftest import DeployedStack
from tests.deploy.tools import container, environment, resources, template

AUDIT_HEADERS = ("x-llm-source", "x-llm-user", "x-llm-request-type")


def _properties(name: str) -> dict[str, Any]:
    found: dict[str, Any] = template()["Resources"][name]["Properties"]
    return found


def _methods() -> dict[str, dict[str, Any]]:
    return {n: b["Properties"] for n, b in resources("AWS::ApiGateway::Method").items()}


def test_regional_rest_api_with_a_vpc_link_to_the_nlb() -> None:
    api = _properties("Api")
    assert api["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    assert api["ApiKeySourceType"] == "HEADER"
    assert _properties("ApiVpcLink")["TargetArns"] == [{"Ref": "LoadBalancer"}]
    assert _properties("ApiProxyResource")["PathPart"] == "{proxy+}"


def test_any_method_on_root_and_proxy_streams_through_the_vpc_link() -> None:
    methods = _methods()
    assert set(methods) == {"ApiRootMethod", "ApiProxyMethod"}
    for name, method in methods.items():
        assert method["HttpMethod"] == "ANY"
        assert method["ApiKeyRequired"] is True
        integration = method["Integration"]
        assert integration["Type"] == "HTTP_PROXY"
        assert integration["ConnectionType"] == "VPC_LINK"
        assert integration["ConnectionId"] == {"Ref": "ApiVpcLink"}
        assert integration["ResponseTransferMode"] == "STREAM", name
        assert integration["TimeoutInMillis"] == LONGEST_GENERATION_S * 1000 > 29_000
        uri = integration["Uri"]["Fn::Sub"]
        assert uri.startswith("http://${LoadBalancer.DNSName}:${ListenerPort}/")
    assert methods["ApiProxyMethod"]["Integration"]["Uri"]["Fn::Sub"].endswith("/{proxy}")


def test_the_three_audit_headers_are_required_by_a_validator() -> None:
    validator = _properties("ApiHeaderValidator")
    assert validator["ValidateRequestParameters"] is True
    for method in _methods().values():
        assert method["RequestValidatorId"] == {"Ref": "ApiHeaderValidator"}
        for header in AUDIT_HEADERS:
            assert method["RequestParameters"][f"method.request.header.{header}"] is True


def test_edge_attribution_headers_come_from_api_gateways_own_context() -> None:
    for method in _methods().values():
        mapped = method["Integration"]["RequestParameters"]
        # A mapped header replaces whatever the client sent under that name.
        assert mapped["integration.request.header.x-edge-api-key-id"] == (
            "context.identity.apiKeyId"
        )
        assert mapped["integration.request.header.x-edge-request-id"] == "context.requestId"
        assert not any(
            "apiKey}" in str(v) or v == "context.identity.apiKey" for v in mapped.values()
        )
    assert environment(container("audit-sidecar"))["TRUST_EDGE_HEADERS"] == "true"


def test_usage_plan_keys_and_stage() -> None:
    plan = _properties("ApiUsagePlan")
    assert plan["UsagePlanName"] == "central-llm-usage-plan"
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "Api"}, "Stage": "prod"}]
    assert plan["Throttle"] == {
        "RateLimit": {"Ref": "ThrottleRateLimit"},
        "BurstLimit": {"Ref": "ThrottleBurstLimit"},
    }
    assert plan["Quota"] == {"Limit": {"Ref": "QuotaLimit"}, "Period": {"Ref": "QuotaPeriod"}}
    assert template()["Parameters"]["ClientApiKeyValue"]["NoEcho"] is True
    assert _properties("ClientApiKeyUsage")["UsagePlanId"] == {"Ref": "ApiUsagePlan"}
    stage = _properties("ApiStage")
    assert stage["StageName"] == "prod"
    access_log = json.loads(stage["AccessLogSetting"]["Format"])
    assert access_log["requestId"] == "$context.requestId"
    assert access_log["apiKeyId"] == "$context.identity.apiKeyId"
    assert "$context.identity.apiKey" not in access_log.values()  # never the key itself


def test_the_sidecar_port_admits_only_the_nlb_and_the_nlb_only_the_vpc_link() -> None:
    nlb = _properties("LoadBalancer")
    assert nlb["SecurityGroups"] == [{"Ref": "LoadBalancerSecurityGroup"}]
    assert nlb["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"] == "off"
    group = _properties("LoadBalancerSecurityGroup")
    assert "SecurityGroupIngress" not in group  # nothing but PrivateLink (the VPC link)
    (egress,) = group["SecurityGroupEgress"]
    assert egress["DestinationSecurityGroupId"] == {"Ref": "TaskSecurityGroup"}
    assert (egress["FromPort"], egress["ToPort"]) == (8000, 8000)


def test_idle_timeout_and_drain_follow_the_longest_generation() -> None:
    (idle,) = _properties("Listener")["ListenerAttributes"]
    assert idle == {"Key": "tcp.idle_timeout.seconds", "Value": str(LONGEST_GENERATION_S)}
    assert LONGEST_GENERATION_S > 350  # the NLB's default idle timeout cut silent generations
    attributes = {a["Key"]: a["Value"] for a in _properties("TargetGroup")["TargetGroupAttributes"]}
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    sidecar = container("audit-sidecar")
    env = environment(sidecar)
    grace, ship = float(env["SHUTDOWN_GRACE_S"]), float(env["SHUTDOWN_SHIP_S"])
    # Stop sequence: deregister, wait `delay` (connections flow), SIGTERM, `grace` for streams.
    assert delay + grace == LONGEST_GENERATION_S
    assert sidecar["stopTimeout"] >= grace + ship


def test_gpu_hosts_come_from_a_capacity_provider() -> None:
    parameters = template()["Parameters"]
    assert parameters["GpuAmiId"]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert parameters["GpuAmiId"]["Default"].endswith("/gpu/recommended/image_id")
    data = _properties("GpuLaunchTemplate")["LaunchTemplateData"]
    assert data["ImageId"] == {"Ref": "GpuAmiId"}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    user_data = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    for line in ("ECS_CLUSTER=${ClusterName}", "ECS_AWSVPC_BLOCK_IMDS=true",
                 "ECS_ENABLE_GPU_SUPPORT=true", "ECS_CONTAINER_STOP_TIMEOUT=2m"):  # fmt: skip
        assert line in user_data.splitlines()
    group = _properties("GpuAutoScalingGroup")
    assert group["NewInstancesProtectedFromScaleIn"] is True  # managed termination protection
    provider = _properties("GpuCapacityProvider")["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    assert provider["ManagedDraining"] == "ENABLED"
    associations = _properties("ClusterCapacityProviders")
    assert associations["CapacityProviders"] == [{"Ref": "GpuCapacityProvider"}]


def test_edge_and_capacity_deploy_into_moto(deployed_stack: DeployedStack) -> None:
    """What moto models of them. It accepts but does not model (reads back nothing for)
    the stage, usage plan, API keys, VPC link and capacity provider: those are above."""
    apigw = deployed_stack.client("apigateway")
    (api,) = [a for a in apigw.get_rest_apis()["items"] if a["name"] == "central-llm"]
    paths = {r["path"]: r for r in apigw.get_resources(restApiId=api["id"])["items"]}
    assert set(paths) == {"/", "/{proxy+}"}
    dns = deployed_stack.outputs["LoadBalancerDnsName"]
    for path, suffix in (("/", "/"), ("/{proxy+}", "/{proxy}")):
        method = apigw.get_method(
            restApiId=api["id"], resourceId=paths[path]["id"], httpMethod="ANY"
        )
        assert method["apiKeyRequired"] is True
        assert method["methodIntegration"]["type"] == "HTTP_PROXY"
        assert method["methodIntegration"]["uri"] == f"http://{dns}:80{suffix}"
    ec2 = deployed_stack.client("ec2")
    groups = ec2.describe_security_groups(GroupIds=[deployed_stack.outputs["TaskSecurityGroupId"]])[
        "SecurityGroups"
    ]
    (rule,) = groups[0]["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"], rule["IpRanges"]) == (8000, 8000, [])
    assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [
        deployed_stack.outputs["LoadBalancerSecurityGroupId"]
    ]
    autoscaling = deployed_stack.client("autoscaling")
    (group,) = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[deployed_stack.outputs["GpuAutoScalingGroupName"]]
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 2, 0)


def _alarm(name: str) -> dict[str, Any]:
    props = _properties(name)
    assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    return props


def test_ingestion_failures_reach_an_alarm_through_a_metric_filter() -> None:
    # batchItemFailures keep Lambda's Errors at 0; the summary line carries failedUnits
    # (test_iam_enforced.py runs the handler and applies this filter to its real line).
    props = _properties("IngestFailuresMetricFilter")
    assert props["LogGroupName"] == {"Ref": "IngestLogGroup"}
    assert "$.failedUnits > 0" in props["FilterPattern"]
    (transformation,) = props["MetricTransformations"]
    assert transformation["MetricName"] == "AuditIngestFailedUnits"
    alarm = _alarm("IngestFailuresAlarm")
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Threshold"]) == (
        "AuditIngestFailedUnits",
        "Sum",
        0,
    )


def test_shipping_stalled_treats_missing_data_as_breaching() -> None:
    assert _alarm("AuditShippingStalledAlarm")["TreatMissingData"] == "breaching"


def test_missing_audit_objects_alarm_compares_shipped_records_with_ingested_items() -> None:
    alarm = _alarm("AuditObjectsMissingAlarm")
    stats = {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert stats["shipped"]["Metric"]["MetricName"] == "AuditRecordsShipped"
    assert stats["ingested"]["Metric"]["MetricName"] == "AuditItemsIngested"
    assert {s["Period"] for s in stats.values()} == {3600}
    assert {s["Stat"] for s in stats.values()} == {"Sum"}
    (expression,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "FILL(shipped, 0) - FILL(ingested, 0)"
    assert alarm["EvaluationPeriods"] == 2
    filters = resources("AWS::Logs::MetricFilter")
    (items,) = [
        f["Properties"]["MetricTransformations"][0]
        for f in filters.values()
        if f["Properties"]["MetricTransformations"][0]["MetricName"] == "AuditItemsIngested"
    ]
    assert items["MetricValue"] == "$.items"


def test_base_images_can_come_through_an_ecr_pull_through_cache() -> None:
    body = template()["Resources"]["DockerHubPullThroughCache"]
    assert body["Condition"] == "HasDockerHubCredential"
    props = body["Properties"]
    assert (props["EcrRepositoryPrefix"], props["UpstreamRegistryUrl"]) == (
        "docker-hub",
        "registry-1.docker.io",
    )
    assert props["CredentialArn"] == {"Ref": "DockerHubCredentialArn"}
    output = template()["Outputs"]["BaseImageRegistry"]
    assert output["Value"]["Fn::Sub"].endswith("/docker-hub")


def _ecs_config(text: str) -> list[str]:
    return text.split("<<'ECSCONFIG'\n", 1)[1].split("ECSCONFIG\n", 1)[0].splitlines()


def test_the_manual_host_gets_the_same_agent_settings_as_the_group() -> None:
    from tests.deploy.tools import SCRIPTS

    stack = template()["Resources"]["GpuLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    group = _ecs_config(stack["UserData"]["Fn::Base64"]["Fn::Sub"])
    manual = _ecs_config((SCRIPTS / "launch-prod-ecr.sh").read_text())
    assert [line.replace("${ClusterName}", "${cluster}") for line in group] == manual
