#!/usr/bin/env bash
# Make API Gateway reject requests without the audit headers, before they reach the NLB.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/apigw-require-audit-headers.sh --rest-api-id ID [options]

On a REST API (API Gateway v1; HTTP APIs have no request validation):
marks x-llm-source, x-llm-user and x-llm-request-type as required request
headers of the method, attaches a request validator that checks parameters
(created once, named central-llm-audit-headers), and deploys the stage. A
request without them gets 400 from API Gateway; the sidecar enforces the same
rule (REQUIRE_AUDIT_HEADERS=true) for traffic that bypasses API Gateway.

Options:
  --rest-api-id ID     the REST API (required)
  --resource-path P    resource to protect [/{proxy+}]
  --http-method M      method of that resource [ANY]
  --stage NAME         stage to deploy [prod]
  --no-deploy          change the method only; deploy later
  --region REGION      [$AWS_REGION or eu-central-1]
  -h, --help           this help
USAGE
}

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
api_id=""
resource_path="/{proxy+}"
http_method="ANY"
stage="prod"
deploy=true
validator_name="central-llm-audit-headers"
headers=(x-llm-source x-llm-user x-llm-request-type)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rest-api-id) api_id="$2"; shift 2 ;;
        --resource-path) resource_path="$2"; shift 2 ;;
        --http-method) http_method="$2"; shift 2 ;;
        --stage) stage="$2"; shift 2 ;;
        --no-deploy) deploy=false; shift ;;
        --region) region="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "${api_id}" ]] || { usage >&2; die "--rest-api-id is required"; }
need aws

resource_id="$(aws apigateway get-resources --region "${region}" --rest-api-id "${api_id}" \
    --limit 500 --query "items[?path=='${resource_path}'].id | [0]" --output text)"
[[ -n "${resource_id}" && "${resource_id}" != "None" ]] \
    || die "resource ${resource_path} not found in REST API ${api_id}"

validator_id="$(aws apigateway get-request-validators --region "${region}" --rest-api-id "${api_id}" \
    --query "items[?name=='${validator_name}'].id | [0]" --output text)"
if [[ -z "${validator_id}" || "${validator_id}" == "None" ]]; then
    validator_id="$(aws apigateway create-request-validator --region "${region}" \
        --rest-api-id "${api_id}" --name "${validator_name}" --validate-request-parameters \
        --no-validate-request-body --query id --output text)"
    log "created request validator ${validator_id}"
fi

existing="$(aws apigateway get-method --region "${region}" --rest-api-id "${api_id}" \
    --resource-id "${resource_id}" --http-method "${http_method}" \
    --query requestParameters --output json)"
operations=("op=replace,path=/requestValidatorId,value=${validator_id}")
for header in "${headers[@]}"; do
    parameter="method.request.header.${header}"
    if [[ "${existing}" == *"\"${parameter}\""* ]]; then
        operations+=("op=replace,path=/requestParameters/${parameter},value=true")
    else
        operations+=("op=add,path=/requestParameters/${parameter},value=true")
    fi
done
aws apigateway update-method --region "${region}" --rest-api-id "${api_id}" \
    --resource-id "${resource_id}" --http-method "${http_method}" \
    --patch-operations "${operations[@]}" >/dev/null
log "${http_method} ${resource_path} now requires ${headers[*]}"

if [[ "${deploy}" == true ]]; then
    deployment="$(aws apigateway create-deployment --region "${region}" --rest-api-id "${api_id}" \
        --stage-name "${stage}" --description "require audit headers" --query id --output text)"
    log "deployed ${deployment} to stage ${stage}"
fi
