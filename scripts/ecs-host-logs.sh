#!/usr/bin/env bash
# Read the service's logs: container logs from CloudWatch, or host diagnostics via SSM.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ecs-host-logs.sh [options]

Default: the containers' logs from CloudWatch Logs (/ecs/central-llm-service;
streams vllm/... and sidecar/...). The sidecar writes one JSON object per line
and never logs prompts or answers.

With --host: runs diagnostics on every container instance of the cluster via
SSM Run Command (no SSH): docker ps, the ECS agent's log tail, nvidia-smi,
disk usage, and the last lines of each task container's docker log.

Options:
  --container NAME  vllm, sidecar or all [all]
  --since DURATION  how far back, e.g. 10m, 2h [30m]
  --follow          keep printing new lines (CloudWatch mode)
  --host            host diagnostics through SSM instead of CloudWatch
  --lines N         docker log lines per container in --host mode [200]
  --log-group NAME  [$LOG_GROUP or /ecs/central-llm-service]
  --cluster NAME    [$CLUSTER or central-llm-service-cluster]
  --region REGION   [$AWS_REGION or eu-central-1]
  -h, --help        this help

Needs the AWS CLI v2 (`aws logs tail`).
USAGE
}

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
log_group="${LOG_GROUP:-/ecs/central-llm-service}"
cluster="${CLUSTER:-central-llm-service-cluster}"
container="all"
since="30m"
follow=false
host=false
lines=200

while [[ $# -gt 0 ]]; do
    case "$1" in
        --container) container="$2"; shift 2 ;;
        --since) since="$2"; shift 2 ;;
        --follow) follow=true; shift ;;
        --host) host=true; shift ;;
        --lines) lines="$2"; shift 2 ;;
        --log-group) log_group="$2"; shift 2 ;;
        --cluster) cluster="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
need aws python3

if [[ "${host}" == false ]]; then
    tail_cmd=(aws logs tail "${log_group}" --region "${region}" --since "${since}" --format short)
    case "${container}" in
        vllm) tail_cmd+=(--log-stream-name-prefix vllm/) ;;
        sidecar) tail_cmd+=(--log-stream-name-prefix sidecar/) ;;
        all) ;;
        *) die "--container must be vllm, sidecar or all" ;;
    esac
    if [[ "${follow}" == true ]]; then
        tail_cmd+=(--follow)
    fi
    exec "${tail_cmd[@]}"
fi

arns="$(aws ecs list-container-instances --region "${region}" --cluster "${cluster}" \
    --query 'containerInstanceArns' --output text)"
[[ -n "${arns}" && "${arns}" != "None" ]] || die "no container instances in ${cluster}"
read -r -a arn_list <<<"${arns}"
read -r -a instance_ids <<<"$(aws ecs describe-container-instances --region "${region}" \
    --cluster "${cluster}" --container-instances "${arn_list[@]}" \
    --query 'containerInstances[].ec2InstanceId' --output text)"

remote_script="$(cat <<REMOTE
set +e
echo "== docker ps"; docker ps --format '{{.Names}}  {{.Status}}  {{.Image}}'
echo "== nvidia-smi"; nvidia-smi
echo "== disk"; df -h / /var/lib/docker
echo "== ecs agent"; tail -n 50 /var/log/ecs/ecs-agent.log
for c in \$(docker ps -a --filter label=com.amazonaws.ecs.cluster --format '{{.Names}}'); do echo "== \$c"; docker logs --tail ${lines} "\$c" 2>&1; done
REMOTE
)"
parameters="$(python3 -c 'import json, sys; print(json.dumps({"commands": sys.stdin.read().splitlines()}))' \
    <<<"${remote_script}")"

command_id="$(aws ssm send-command --region "${region}" --document-name AWS-RunShellScript \
    --comment "central-llm host diagnostics" --instance-ids "${instance_ids[@]}" \
    --parameters "${parameters}" --query Command.CommandId --output text)"
log "SSM command ${command_id} on ${instance_ids[*]}"
for instance in "${instance_ids[@]}"; do
    aws ssm wait command-executed --region "${region}" --command-id "${command_id}" \
        --instance-id "${instance}" || true
    printf '\n##### %s\n' "${instance}"
    aws ssm get-command-invocation --region "${region}" --command-id "${command_id}" \
        --instance-id "${instance}" --query StandardOutputContent --output text
done
