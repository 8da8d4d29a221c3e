#!/usr/bin/env bash
# Create or update the whole Central LLM stack (ecs/central-llm-stack.json).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/deploy-stack.sh [options]

Deploys ecs/central-llm-stack.json with `aws cloudformation deploy` (a change
set; waits until the stack, and so the ECS service, is stable). With tasks
wanted, the GPU capacity provider starts a host for them (a few minutes), then
vLLM loads the model; the wait is bounded by --wait-timeout, after which the
script stops waiting, shows the service's latest events, its hosts and the
GPU group, and exits 1 (CloudFormation carries on; the circuit breaker rolls
a failing deployment back). Parameters not
given keep their current value on an existing stack, so an image or Lambda
update passes only what changes. The artifacts bucket holds the Lambda zips
(and the template, should it outgrow CloudFormation's inline limit).

Options:
  --stack NAME            stack name [$STACK_NAME or central-llm]
  --region REGION         AWS region [$AWS_REGION or eu-central-1]
  --template PATH         template file [$STACK_TEMPLATE or ecs/central-llm-stack.json]
  --artifacts-bucket B    bucket for the template and the Lambda zip, created if
                          missing [$ARTIFACTS_BUCKET or central-llm-artifacts-<account>-<region>]
  --package-lambda        zip the package lambda/llm_audit/, upload it (content-addressed)
                          and point the function at it
  --vpc-id ID             VpcId (first deploy)
  --subnets ID,ID         SubnetIds, private subnets (first deploy)
  --desired-count N       DesiredCount (0 until images exist)
  --vllm-tag TAG          VllmImageTag (immutable image tag)
  --sidecar-tag TAG       SidecarImageTag (immutable image tag)
  --alarm-email ADDRESS   AlarmEmail
  --wait-timeout SECONDS  stop waiting for the stack after this long [3600]
  --param KEY=VALUE       any other template parameter (repeatable)
  -h, --help              this help

Examples:
  scripts/deploy-stack.sh --package-lambda --vpc-id vpc-0abc \
      --subnets subnet-1,subnet-2 --desired-count 0          # first deploy
  scripts/deploy-stack.sh --vllm-tag git-1a2b3c4d5e6f --sidecar-tag git-1a2b3c4d5e6f
USAGE
}

root="$(repo_root)"
stack="${STACK_NAME:-${DEFAULT_STACK}}"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
template="${STACK_TEMPLATE:-${root}/ecs/central-llm-stack.json}"
artifacts_bucket="${ARTIFACTS_BUCKET:-}"
package_lambda=false
wait_timeout=3600
overrides=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --stack) stack="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        --template) template="$2"; shift 2 ;;
        --artifacts-bucket) artifacts_bucket="$2"; shift 2 ;;
        --package-lambda) package_lambda=true; shift ;;
        --vpc-id) overrides+=("VpcId=$2"); shift 2 ;;
        --subnets) overrides+=("SubnetIds=$2"); shift 2 ;;
        --desired-count) overrides+=("DesiredCount=$2"); shift 2 ;;
        --vllm-tag) overrides+=("VllmImageTag=$2"); shift 2 ;;
        --sidecar-tag) overrides+=("SidecarImageTag=$2"); shift 2 ;;
        --alarm-email) overrides+=("AlarmEmail=$2"); shift 2 ;;
        --wait-timeout) wait_timeout="$2"; shift 2 ;;
        --param)
            [[ "$2" == *=* ]] || die "--param needs KEY=VALUE, got '$2'"
            overrides+=("$2"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
need aws python3
[[ -f "${template}" ]] || die "template not found: ${template}"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

if [[ -z "${artifacts_bucket}" ]]; then
    account="$(aws sts get-caller-identity --region "${region}" --query Account --output text)"
    artifacts_bucket="central-llm-artifacts-${account}-${region}"
fi

if ! aws s3api head-bucket --region "${region}" --bucket "${artifacts_bucket}" >/dev/null 2>&1; then
    log "creating artifacts bucket ${artifacts_bucket}"
    if [[ "${region}" == "us-east-1" ]]; then
        aws s3api create-bucket --region "${region}" --bucket "${artifacts_bucket}" >/dev/null
    else
        aws s3api create-bucket --region "${region}" --bucket "${artifacts_bucket}" \
            --create-bucket-configuration "LocationConstraint=${region}" >/dev/null
    fi
    aws s3api put-public-access-block --region "${region}" --bucket "${artifacts_bucket}" \
        --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    aws s3api put-bucket-versioning --region "${region}" --bucket "${artifacts_bucket}" \
        --versioning-configuration Status=Enabled
fi

if [[ "${package_lambda}" == true ]]; then
    zip_path="$("${root}/scripts/package-lambda.sh" --out "${work}/llm-audit-ingest.zip")"
    digest="$(sha256_of "${zip_path}" | cut -c1-16)"
    key="lambda/llm-audit-ingest-${digest}.zip"
    if aws s3api head-object --region "${region}" --bucket "${artifacts_bucket}" --key "${key}" \
        >/dev/null 2>&1; then
        log "Lambda package s3://${artifacts_bucket}/${key} already uploaded"
    else
        log "uploading Lambda package to s3://${artifacts_bucket}/${key}"
        aws s3api put-object --region "${region}" --bucket "${artifacts_bucket}" --key "${key}" \
            --body "${zip_path}" >/dev/null
    fi
    overrides+=("LambdaCodeBucket=${artifacts_bucket}" "LambdaCodeKey=${key}")
fi

# Whitespace-free, the template usually fits CloudFormation's inline limit
# (51,200 bytes); when it does not, it travels through the artifacts bucket.
compact="${work}/template.json"
python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))' \
    "${template}" "${compact}"
deploy=(aws cloudformation deploy --region "${region}" --stack-name "${stack}"
    --template-file "${compact}" --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
if [[ "$(wc -c <"${compact}")" -gt 51200 ]]; then
    deploy+=(--s3-bucket "${artifacts_bucket}" --s3-prefix cloudformation)
fi
if [[ ${#overrides[@]} -gt 0 ]]; then
    deploy+=(--parameter-overrides "${overrides[@]}")
    log "deploying ${stack} in ${region} with ${overrides[*]}"
else
    log "deploying ${stack} in ${region} (parameters unchanged)"
fi
# What the service waits for: its latest events, the hosts in the cluster, the GPU group.
explain_service() {
    local cluster service group
    cluster="$(stack_output "${stack}" ClusterName "${region}" 2>/dev/null)" || return 0
    service="$(stack_output "${stack}" ServiceName "${region}" 2>/dev/null)" || return 0
    log "latest events of service ${service}:"
    aws ecs describe-services --region "${region}" --cluster "${cluster}" --services "${service}" \
        --query 'services[0].events[:5].[createdAt,message]' --output text >&2 || true
    log "container instances in ${cluster}: $(aws ecs list-container-instances --region "${region}" \
        --cluster "${cluster}" --query 'length(containerInstanceArns)' --output text 2>/dev/null || echo '?')"
    if group="$(stack_output "${stack}" GpuAutoScalingGroupName "${region}" 2>/dev/null)"; then
        log "GPU group ${group} (desired, instances):"
        aws autoscaling describe-auto-scaling-groups --region "${region}" \
            --auto-scaling-group-names "${group}" \
            --query 'AutoScalingGroups[0].[DesiredCapacity,length(Instances)]' --output text >&2 || true
    fi
}

status=0
if command -v timeout >/dev/null 2>&1; then
    timeout "${wait_timeout}" "${deploy[@]}" || status=$?
else
    "${deploy[@]}" || status=$?
fi
if [[ ${status} -ne 0 ]]; then
    explain_service
    if [[ ${status} -eq 124 ]]; then
        die "stopped waiting after ${wait_timeout}s; ${stack} is still updating in CloudFormation"
    fi
    die "deploying ${stack} failed (exit ${status})"
fi

aws cloudformation describe-stacks --region "${region}" --stack-name "${stack}" \
    --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
