#!/usr/bin/env bash
# Build both images, push them to ECR under immutable tags, redeploy the service.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/build-push-deploy.sh [options]

Steps, in order (default: all of them):
  model    download the model artifacts: build vllm_engine/ up to its `model`
           stage (HF_TOKEN from the environment, passed as a BuildKit secret,
           never stored in the image)
  build    build the vLLM image (vllm_engine/, model baked in), the sidecar
           image (sidecar_audit/Dockerfile, repository root as context) and,
           from the same Dockerfile's `ops` target, the audit reconciliation
           image <sidecar tag>-ops (central_llm_ops; the scheduled task runs it)
  push     log in to ECR and push the tags; a tag already in ECR is left alone
           (the repositories are IMMUTABLE: a tag always means the same image)
  deploy   check the tags are in ECR, then scripts/deploy-stack.sh --vllm-tag ...
           --sidecar-tag ...: a new task definition revision and an ECS rolling
           deployment (circuit breaker rolls back on failure)

Tags are content digests (scripts/image_tag.py): the vLLM tag covers
vllm_engine/ and the pinned model, the sidecar tag the sidecar's sources. A
commit that changes neither builds nothing new; only an engine or model change
rebuilds the model layer.

Options:
  --steps LIST          comma-separated subset of model,build,push,deploy
  --tag TAG             tag for both images [the content tags]
  --vllm-tag TAG        tag of the vLLM image [vllm-<digest>]
  --sidecar-tag TAG     tag of the sidecar image [sidecar-<digest>]
  --model-id ID         Hugging Face model [$MODEL_ID or vllm_engine/model.env]
  --model-revision REV  pinned model commit, 40 hex [$MODEL_REVISION or vllm_engine/model.env]
  --base-registry REG   pull base images through this registry, e.g. an ECR
                        pull-through cache of Docker Hub
                        (<account>.dkr.ecr.<region>.amazonaws.com/docker-hub, the
                        stack's BaseImageRegistry output) [$BASE_IMAGE_REGISTRY]
  --vllm-repo NAME      ECR repository of vLLM [$VLLM_REPO or mistral8b-vllm]
  --sidecar-repo NAME   ECR repository of the sidecar [$SIDECAR_REPO or central-llm-sidecar]
  --stack NAME          stack to redeploy [$STACK_NAME or central-llm]
  --region REGION       [$AWS_REGION or eu-central-1]
  --platform PLATFORM   image platform [linux/amd64]
  -h, --help            this help
USAGE
}

root="$(repo_root)"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
stack="${STACK_NAME:-${DEFAULT_STACK}}"
steps="model,build,push,deploy"
tag=""
vllm_tag=""
sidecar_tag=""
model_id="${MODEL_ID:-$(model_setting MODEL_ID)}"
model_revision="${MODEL_REVISION:-$(model_setting MODEL_REVISION)}"
base_registry="${BASE_IMAGE_REGISTRY:-}"
vllm_repo="${VLLM_REPO:-mistral8b-vllm}"
sidecar_repo="${SIDECAR_REPO:-central-llm-sidecar}"
platform="linux/amd64"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --vllm-tag) vllm_tag="$2"; shift 2 ;;
        --sidecar-tag) sidecar_tag="$2"; shift 2 ;;
        --model-id) model_id="$2"; shift 2 ;;
        --model-revision) model_revision="$2"; shift 2 ;;
        --base-registry) base_registry="$2"; shift 2 ;;
        --vllm-repo) vllm_repo="$2"; shift 2 ;;
        --sidecar-repo) sidecar_repo="$2"; shift 2 ;;
        --stack) stack="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        --platform) platform="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

want() { [[ ",${steps}," == *",$1,"* ]]; }

need python3
if [[ -z "${vllm_tag:-${tag}}" ]]; then
    vllm_tag="$(python3 "${root}/scripts/image_tag.py" vllm --model-id "${model_id}" \
        --model-revision "${model_revision}")" || die "cannot derive the vLLM image tag"
fi
if [[ -z "${sidecar_tag:-${tag}}" ]]; then
    sidecar_tag="$(python3 "${root}/scripts/image_tag.py" sidecar)"
fi
vllm_tag="${vllm_tag:-${tag}}"
sidecar_tag="${sidecar_tag:-${tag}}"

need aws
if want model || want build || want push; then
    need docker
fi
account="$(aws sts get-caller-identity --region "${region}" --query Account --output text)"
registry="${account}.dkr.ecr.${region}.amazonaws.com"
vllm_image="${registry}/${vllm_repo}:${vllm_tag}"
sidecar_image="${registry}/${sidecar_repo}:${sidecar_tag}"
# The reconciliation task's image: the ops target, same sources, so the same tag + "-ops"
# (the stack derives it from SidecarImageTag).
ops_image="${sidecar_image}-ops"

vllm_build_args=(--platform "${platform}" --build-arg "MODEL_ID=${model_id}"
    --build-arg "MODEL_REVISION=${model_revision}")
sidecar_build_args=(--platform "${platform}")
if [[ -n "${base_registry}" ]]; then
    # Docker Hub names as a pull-through cache spells them (official images under library/).
    vllm_base="$(dockerfile_arg "${root}/vllm_engine/Dockerfile" VLLM_BASE_IMAGE)"
    python_base="$(dockerfile_arg "${root}/sidecar_audit/Dockerfile" PYTHON_IMAGE)"
    vllm_build_args+=(--build-arg "VLLM_BASE_IMAGE=${base_registry}/${vllm_base}")
    sidecar_build_args+=(--build-arg "PYTHON_IMAGE=${base_registry}/library/${python_base}")
fi
if [[ -n "${HF_TOKEN:-}" ]]; then
    hf_secret="id=hf_token,env=HF_TOKEN"
    vllm_build_args+=(--secret "${hf_secret}")
fi

in_ecr() {
    aws ecr describe-images --region "${region}" --repository-name "$1" \
        --image-ids "imageTag=$2" >/dev/null 2>&1
}

# The vLLM tag is a digest of the engine and the pinned model: when ECR has it,
# the ~16 GB model layer is neither downloaded nor built again.
vllm_done=false
if (want model || want build) && in_ecr "${vllm_repo}" "${vllm_tag}"; then
    vllm_done=true
    log "${vllm_repo}:${vllm_tag} is already in ECR: no model download, no vLLM build"
fi

if want model && [[ "${vllm_done}" == false ]]; then
    [[ -n "${HF_TOKEN:-}" ]] || log "HF_TOKEN is not set: only public models can be downloaded"
    log "downloading ${model_id}@${model_revision} (vllm_engine model stage)"
    docker build "${vllm_build_args[@]}" --target model -t "central-llm-model:${vllm_tag}" \
        "${root}/vllm_engine"
fi

if want build; then
    if [[ "${vllm_done}" == false ]]; then
        log "building ${vllm_image}"
        docker build "${vllm_build_args[@]}" -t "${vllm_image}" "${root}/vllm_engine"
    fi
    log "building ${sidecar_image}"
    docker build "${sidecar_build_args[@]}" -f "${root}/sidecar_audit/Dockerfile" \
        -t "${sidecar_image}" "${root}"
    log "building ${ops_image}"
    docker build "${sidecar_build_args[@]}" -f "${root}/sidecar_audit/Dockerfile" \
        --target ops -t "${ops_image}" "${root}"
fi

push_once() {
    local repo="$1" image_tag="$2" image="$3"
    if in_ecr "${repo}" "${image_tag}"; then
        log "${repo}:${image_tag} already in ECR, not pushed again"
    else
        log "pushing ${image}"
        docker push "${image}"
    fi
}

if want push; then
    aws ecr get-login-password --region "${region}" \
        | docker login --username AWS --password-stdin "${registry}"
    push_once "${vllm_repo}" "${vllm_tag}" "${vllm_image}"
    push_once "${sidecar_repo}" "${sidecar_tag}" "${sidecar_image}"
    push_once "${sidecar_repo}" "${sidecar_tag}-ops" "${ops_image}"
fi

if want deploy; then
    for pair in "${vllm_repo}:${vllm_tag}" "${sidecar_repo}:${sidecar_tag}" \
        "${sidecar_repo}:${sidecar_tag}-ops"; do
        in_ecr "${pair%%:*}" "${pair#*:}" || die "${pair} is not in ECR: run the build and push steps first"
    done
    "${root}/scripts/deploy-stack.sh" --stack "${stack}" --region "${region}" \
        --vllm-tag "${vllm_tag}" --sidecar-tag "${sidecar_tag}"
fi
log "done: vllm ${vllm_tag}, sidecar ${sidecar_tag}"
