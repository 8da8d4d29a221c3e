"""The API edge: a regional REST API reaching the internal NLB through a VPC link.

Every method is `ANY` on `/` and `/{proxy+}`, an `HTTP_PROXY` integration over
the VPC link with `ResponseTransferMode: STREAM` (bytes reach the client as
the sidecar sends them; a BUFFERED integration would hold a whole SSE stream)
and an integration timeout of `INTEGRATION_TIMEOUT_MS` (streaming REST
integrations may run up to 15 minutes). Clients must send an API key
(`ApiKeyRequired`, usage plan `central-llm-usage-plan` with throttle and
quota parameters) and the three audit headers (a request validator rejects a
request without them with 400 before it reaches the VPC).

Attribution the client cannot forge: the integration sets
`x-edge-api-key-id` from `$context.identity.apiKeyId` and `x-edge-request-id`
from `$context.requestId`. A request parameter mapping replaces any header of
the same name the client sent, and the task's security group admits only the
NLB, so the sidecar (`TRUST_EDGE_HEADERS=true` in the task definition) may
record them. The API key itself never leaves API Gateway.

Stage `prod` writes one JSON access-log line per request (ids, key id,
status, latency; never the key or a body). Access logging needs the
account-level CloudWatch role of API Gateway (`ApiGatewayAccount`, one per
account and region: a second stack in the same region must not create it too).
"""

from __future__ import annotations

import json

from ecs.stackgen.cfn import Json, get_att, ref, sub

AUDIT_HEADERS = ("x-llm-source", "x-llm-user", "x-llm-request-type")
EDGE_HEADERS = {
    "x-edge-api-key-id": "context.identity.apiKeyId",
    "x-edge-request-id": "context.requestId",
}
# The longest generation the edge lets run: API Gateway's ceiling for a streamed
# REST integration (15 min). The NLB's TCP idle timeout and the drain follow it.
LONGEST_GENERATION_S = 900
INTEGRATION_TIMEOUT_MS = LONGEST_GENERATION_S * 1000
USAGE_PLAN_NAME = "central-llm-usage-plan"

ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "apiKeyId": "$context.identity.apiKeyId",
        "sourceIp": "$context.identity.sourceIp",
        "requestTime": "$context.requestTime",
        "httpMethod": "$context.httpMethod",
        "path": "$context.path",
        "status": "$context.status",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationStatus": "$context.integration.status",
        "integrationLatency": "$context.integration.latency",
        "errorMessage": "$context.error.message",
    },
    separators=(",", ":"),
)


def edge_parameters() -> dict[str, Json]:
    def number(default: int, description: str, minimum: int) -> Json:
        return {
            "Type": "Number",
            "Default": default,
            "MinValue": minimum,
            "Description": description,
        }

    return {
        "ApiName": {"Type": "String", "Default": "central-llm", "Description": "REST API name"},
        "ThrottleRateLimit": number(20, "Usage plan: steady requests per second per key", 1),
        "ThrottleBurstLimit": number(40, "Usage plan: burst requests per key", 1),
        "QuotaLimit": number(100000, "Usage plan: requests per key per quota period", 1),
        "QuotaPeriod": {
            "Type": "String",
            "Default": "MONTH",
            "AllowedValues": ["DAY", "WEEK", "MONTH"],
            "Description": "Usage plan: quota period",
        },
        "ClientApiKeyName": {
            "Type": "String",
            "Default": "central-llm-default-client",
            "Description": "Name of the first client's API key (more keys: docs/deployment.md)",
        },
        "ClientApiKeyValue": {
            "Type": "String",
            "Default": "",
            "NoEcho": True,
            "AllowedPattern": "^$|^[A-Za-z0-9]{20,128}$",
            "Description": "First client's API key value; empty: API Gateway generates one",
        },
    }


def _method_parameters(with_proxy: bool) -> Json:
    required = {f"method.request.header.{name}": True for name in AUDIT_HEADERS}
    if with_proxy:
        required["method.request.path.proxy"] = True
    return required


def _integration(with_proxy: bool) -> Json:
    parameters = {
        f"integration.request.header.{name}": source for name, source in EDGE_HEADERS.items()
    }
    path = "/{proxy}" if with_proxy else "/"
    if with_proxy:
        parameters["integration.request.path.proxy"] = "method.request.path.proxy"
    return {
        "Type": "HTTP_PROXY",
        "IntegrationHttpMethod": "ANY",
        "ConnectionType": "VPC_LINK",
        "ConnectionId": ref("ApiVpcLink"),
        "Uri": sub(f"http://${{LoadBalancer.DNSName}}:${{ListenerPort}}{path}"),
        "TimeoutInMillis": INTEGRATION_TIMEOUT_MS,
        "ResponseTransferMode": "STREAM",
        "PassthroughBehavior": "WHEN_NO_MATCH",
        "RequestParameters": parameters,
    }


def _method(resource: Json, with_proxy: bool) -> Json:
    return {
        "Type": "AWS::ApiGateway::Method",
        "Properties": {
            "RestApiId": ref("Api"),
            "ResourceId": resource,
            "HttpMethod": "ANY",
            "AuthorizationType": "NONE",
            "ApiKeyRequired": True,
            "RequestValidatorId": ref("ApiHeaderValidator"),
            "RequestParameters": _method_parameters(with_proxy),
            "Integration": _integration(with_proxy),
        },
    }


def _api() -> dict[str, Json]:
    return {
        "Api": {
            "Type": "AWS::ApiGateway::RestApi",
            "Properties": {
                "Name": ref("ApiName"),
                "Description": "Central LLM: audited OpenAI-compatible API",
                "EndpointConfiguration": {"Types": ["REGIONAL"]},
                "ApiKeySourceType": "HEADER",
                "DisableExecuteApiEndpoint": False,
            },
        },
        "ApiVpcLink": {
            "Type": "AWS::ApiGateway::VpcLink",
            "Properties": {
                "Name": sub("${AWS::StackName}-nlb"),
                "TargetArns": [ref("LoadBalancer")],
            },
        },
        "ApiHeaderValidator": {
            "Type": "AWS::ApiGateway::RequestValidator",
            "Properties": {
                "RestApiId": ref("Api"),
                "Name": "require-audit-headers",
                "ValidateRequestParameters": True,
                "ValidateRequestBody": False,
            },
        },
        "ApiProxyResource": {
            "Type": "AWS::ApiGateway::Resource",
            "Properties": {
                "RestApiId": ref("Api"),
                "ParentId": get_att("Api", "RootResourceId"),
                "PathPart": "{proxy+}",
            },
        },
        "ApiRootMethod": _method(get_att("Api", "RootResourceId"), with_proxy=False),
        "ApiProxyMethod": _method(ref("ApiProxyResource"), with_proxy=True),
    }


def _stage() -> dict[str, Json]:
    return {
        "ApiAccessLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "LogGroupName": sub("/aws/apigateway/${ApiName}-access"),
                "RetentionInDays": 365,
            },
        },
        "ApiGatewayCloudWatchRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "apigateway.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "ManagedPolicyArns": [
                    sub(
                        "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                        "AmazonAPIGatewayPushToCloudWatchLogs"
                    )
                ],
            },
        },
        "ApiGatewayAccount": {
            "Type": "AWS::ApiGateway::Account",
            "Properties": {"CloudWatchRoleArn": get_att("ApiGatewayCloudWatchRole", "Arn")},
        },
        # A new deployment is needed for method changes to reach the stage: change
        # this resource's logical id (or run `aws apigateway create-deployment`).
        "ApiDeployment": {
            "Type": "AWS::ApiGateway::Deployment",
            "DependsOn": ["ApiRootMethod", "ApiProxyMethod"],
            "Properties": {"RestApiId": ref("Api"), "Description": "Central LLM edge"},
        },
        "ApiStage": {
            "Type": "AWS::ApiGateway::Stage",
            "DependsOn": ["ApiGatewayAccount"],
            "Properties": {
                "RestApiId": ref("Api"),
                "StageName": "prod",
                "DeploymentId": ref("ApiDeployment"),
                "TracingEnabled": True,
                "AccessLogSetting": {
                    "DestinationArn": get_att("ApiAccessLogGroup", "Arn"),
                    "Format": ACCESS_LOG_FORMAT,
                },
                "MethodSettings": [
                    {
                        "ResourcePath": "/*",
                        "HttpMethod": "*",
                        "MetricsEnabled": True,
                        "LoggingLevel": "ERROR",
                        "DataTraceEnabled": False,
                    }
                ],
            },
        },
    }


def _usage() -> dict[str, Json]:
    return {
        "ApiUsagePlan": {
            "Type": "AWS::ApiGateway::UsagePlan",
            "DependsOn": ["ApiStage"],
            "Properties": {
                "UsagePlanName": USAGE_PLAN_NAME,
                "Description": "Central LLM clients: throttle and quota per API key",
                "ApiStages": [{"ApiId": ref("Api"), "Stage": "prod"}],
                "Throttle": {
                    "RateLimit": ref("ThrottleRateLimit"),
                    "BurstLimit": ref("ThrottleBurstLimit"),
                },
                "Quota": {"Limit": ref("QuotaLimit"), "Period": ref("QuotaPeriod")},
            },
        },
        "ClientApiKey": {
            "Type": "AWS::ApiGateway::ApiKey",
            "DependsOn": ["ApiStage"],
            "Properties": {
                "Name": ref("ClientApiKeyName"),
                "Enabled": True,
                "Value": {
                    "Fn::If": [
                        "HasClientApiKeyValue",
                        ref("ClientApiKeyValue"),
                        ref("AWS::NoValue"),
                    ]
                },
            },
        },
        "ClientApiKeyUsage": {
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": {
                "KeyId": ref("ClientApiKey"),
                "KeyType": "API_KEY",
                "UsagePlanId": ref("ApiUsagePlan"),
            },
        },
    }


def edge_conditions() -> dict[str, Json]:
    return {"HasClientApiKeyValue": {"Fn::Not": [{"Fn::Equals": [ref("ClientApiKeyValue"), ""]}]}}


def edge_outputs() -> dict[str, Json]:
    return {
        "ApiId": {"Value": ref("Api"), "Description": "REST API id"},
        "ApiEndpoint": {
            "Value": sub("https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/prod"),
            "Description": "Clients' base URL (OpenAI SDK base_url: this + /v1)",
        },
        "ClientApiKeyId": {
            "Value": ref("ClientApiKey"),
            "Description": "First client's key id (aws apigateway get-api-key --include-value)",
        },
        "UsagePlanId": {"Value": ref("ApiUsagePlan"), "Description": USAGE_PLAN_NAME},
    }


def edge_resources() -> dict[str, Json]:
    return {**_api(), **_stage(), **_usage()}
