#!/usr/bin/env bash
# Shared helpers for the operator scripts in scripts/ (sourced, never run).
# Every script: `set -euo pipefail`, `--help`, region and names overridable by
# flags or the environment (AWS_REGION, STACK_NAME, ...).

# Used by the scripts that source this file.
# shellcheck disable=SC2034
DEFAULT_REGION="eu-central-1"
# shellcheck disable=SC2034
DEFAULT_STACK="central-llm"

log() {
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

need() {
    local cmd
    for cmd in "$@"; do
        command -v "${cmd}" >/dev/null 2>&1 || die "'${cmd}' is required but not installed"
    done
}

# Value of one output of a CloudFormation stack; fails with the stack's name if absent.
stack_output() {
    local stack="$1" key="$2" region="$3" value
    value="$(aws cloudformation describe-stacks --region "${region}" --stack-name "${stack}" \
        --query "Stacks[0].Outputs[?OutputKey=='${key}'].OutputValue | [0]" --output text)" \
        || die "cannot describe stack ${stack} in ${region}"
    [[ -n "${value}" && "${value}" != "None" ]] || die "stack ${stack} has no output ${key}"
    printf '%s\n' "${value}"
}

# Hex SHA-256 of a file (python3, so it works the same on Linux and macOS).
sha256_of() {
    python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# A KEY=VALUE setting of vllm_engine/model.env (empty when unset).
model_setting() {
    local file
    file="$(repo_root)/vllm_engine/model.env"
    [[ -f "${file}" ]] || return 0
    sed -n "s/^$1=//p" "${file}" | tail -n 1
}

# Default value of an ARG in a Dockerfile.
dockerfile_arg() {
    sed -n "s/^ARG $2=//p" "$1" | head -n 1
}

repo_root() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}
