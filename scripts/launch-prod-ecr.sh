#!/usr/bin/env bash
# Launch a GPU host into the ECS cluster and wait until the service is stable.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/launch-prod-ecr.sh --subnet SUBNET_ID [options]

The manual path: the stack's GPU capacity provider starts hosts on its own;
this starts one outside its Auto Scaling group, with the same agent settings.

1. looks up the latest ECS-optimized GPU AMI (Amazon Linux 2023) in SSM;
2. takes the cluster, instance profile and host security group from the stack
   (the task security group is separate, also from the stack);
3. starts the instance with ECS_CLUSTER, GPU support and a stop timeout that
   covers the sidecar's drain, IMDSv2 only, an encrypted gp3 root volume;
4. waits until it runs and has registered with the cluster;
5. waits until the service is stable (the model loads before the sidecar
   starts, so this can take several minutes).

Options:
  --subnet ID           private subnet of the host (required; same VPC as the stack)
  --instance-type TYPE  [$INSTANCE_TYPE or g5.xlarge]
  --count N             instances to start [1]
  --root-volume-gb N    root volume size, holds images and the baked model [200]
  --ami-parameter NAME  SSM parameter of the AMI
                        [/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id]
  --key-name NAME       EC2 key pair (optional; SSM Session Manager works without)
  --stack NAME          [$STACK_NAME or central-llm]
  --region REGION       [$AWS_REGION or eu-central-1]
  --cluster NAME        override the stack's cluster
  --service NAME        override the stack's service
  --security-group ID   override the stack's host security group
  --instance-profile N  override the stack's instance profile
  --timeout SECONDS     give up waiting for a stable service after this long [1800]
  --no-wait             start the instance and return
  -h, --help            this help
USAGE
}

stack="${STACK_NAME:-${DEFAULT_STACK}}"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
instance_type="${INSTANCE_TYPE:-g5.xlarge}"
count=1
root_gb=200
ami_parameter="/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
key_name=""
subnet=""
cluster=""
service=""
security_group=""
instance_profile=""
timeout_s=1800
wait=true

while [[ $# -gt 0 ]]; do
    case "$1" in
        --subnet) subnet="$2"; shift 2 ;;
        --instance-type) instance_type="$2"; shift 2 ;;
        --count) count="$2"; shift 2 ;;
        --root-volume-gb) root_gb="$2"; shift 2 ;;
        --ami-parameter) ami_parameter="$2"; shift 2 ;;
        --key-name) key_name="$2"; shift 2 ;;
        --stack) stack="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        --cluster) cluster="$2"; shift 2 ;;
        --service) service="$2"; shift 2 ;;
        --security-group) security_group="$2"; shift 2 ;;
        --instance-profile) instance_profile="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --no-wait) wait=false; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "${subnet}" ]] || { usage >&2; die "--subnet is required"; }
need aws

cluster="${cluster:-$(stack_output "${stack}" ClusterName "${region}")}"
service="${service:-$(stack_output "${stack}" ServiceName "${region}")}"
security_group="${security_group:-$(stack_output "${stack}" InstanceSecurityGroupId "${region}")}"
instance_profile="${instance_profile:-$(stack_output "${stack}" InstanceProfileName "${region}")}"

ami="$(aws ssm get-parameter --region "${region}" --name "${ami_parameter}" \
    --query Parameter.Value --output text)"
log "AMI ${ami} (${ami_parameter}), ${count} x ${instance_type} into cluster ${cluster}"

user_data="$(mktemp)"
trap 'rm -f "${user_data}"' EXIT
cat >"${user_data}" <<USERDATA
#!/bin/bash
cat >>/etc/ecs/ecs.config <<'ECSCONFIG'
ECS_CLUSTER=${cluster}
ECS_ENABLE_GPU_SUPPORT=true
ECS_AWSVPC_BLOCK_IMDS=true
ECS_CONTAINER_STOP_TIMEOUT=2m
ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
ECS_ENABLE_CONTAINER_METADATA=true
ECSCONFIG
USERDATA

run=(aws ec2 run-instances --region "${region}" --image-id "${ami}"
    --instance-type "${instance_type}" --count "${count}" --subnet-id "${subnet}"
    --security-group-ids "${security_group}"
    --iam-instance-profile "Name=${instance_profile}"
    --user-data "file://${user_data}"
    --metadata-options "HttpTokens=required,HttpPutResponseHopLimit=2,HttpEndpoint=enabled"
    --block-device-mappings "DeviceName=/dev/xvda,Ebs={VolumeSize=${root_gb},VolumeType=gp3,Encrypted=true,DeleteOnTermination=true}"
    --tag-specifications "ResourceType=instance,Tags=[{Key=Name,Value=${cluster}-gpu},{Key=central-llm:cluster,Value=${cluster}}]"
    --query 'Instances[].InstanceId' --output text)
if [[ -n "${key_name}" ]]; then
    run+=(--key-name "${key_name}")
fi
read -r -a instances <<<"$("${run[@]}")"
[[ ${#instances[@]} -gt 0 ]] || die "run-instances returned no instance"
log "started ${instances[*]}"
[[ "${wait}" == true ]] || exit 0

aws ec2 wait instance-running --region "${region}" --instance-ids "${instances[@]}"
log "running; waiting for the ECS agent to register"

deadline=$((SECONDS + timeout_s))
for instance in "${instances[@]}"; do
    until [[ -n "$(aws ecs list-container-instances --region "${region}" --cluster "${cluster}" \
        --filter "ec2InstanceId == ${instance}" --query 'containerInstanceArns[0]' --output text \
        | grep -v '^None$' || true)" ]]; do
        ((SECONDS < deadline)) || die "${instance} did not register with ${cluster} in ${timeout_s}s"
        sleep 10
    done
    log "${instance} registered with ${cluster}"
done

log "waiting for service ${service} to become stable (model load included)"
until aws ecs wait services-stable --region "${region}" --cluster "${cluster}" \
    --services "${service}" 2>/dev/null; do
    ((SECONDS < deadline)) || die "service ${service} not stable after ${timeout_s}s; see scripts/ecs-host-logs.sh"
    log "not stable yet"
done
log "service ${service} is stable"
