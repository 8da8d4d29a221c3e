#!/usr/bin/env bash
# The vLLM OpenAI server's launch arguments, in one place.
#
# Runs the unmodified `vllm serve` of the base image (GPU or CPU) with the
# arguments the audit sidecar relies on:
#   --host 127.0.0.1 --port 8001   only the sidecar (same network namespace) reaches vLLM
#   --served-model-name            the name clients put in "model"
#   --max-model-len                context window the KV cache is sized for
#   --enable-request-id-headers    vLLM returns X-Request-Id; it reuses the id the
#                                  sidecar sends, so one id names the request end to end
#   --shutdown-timeout             on SIGTERM, in-flight requests get this long to finish
#                                  (same window as the sidecar's SHUTDOWN_GRACE_S)
#   --enable-auto-tool-choice      tool calling (`tools` / `tool_choice: auto` in requests),
#   --tool-call-parser NAME        parsed by the model family's parser: `mistral` for the
#                                  Mistral model (the default), `hermes` for Qwen (compose);
#                                  names registered in the 0.33.0 wheel's vllm/tool_parsers/__init__.py
# Every flag must exist in the pinned release: vllm-<version>-flags.txt beside this
# file lists what that `vllm serve` accepts (tests/deploy/test_vllm_flags.py checks).
# `exec` makes vLLM the container's main process, so SIGTERM reaches it.
# Every value can be overridden by the environment; VLLM_EXTRA_ARGS is appended
# verbatim (word-split) for model-specific flags.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: entrypoint.sh [--print] [extra vllm serve args...]

Starts `vllm serve` with Central LLM's launch arguments.

Environment (defaults in brackets):
  MODEL                  model path or Hugging Face id [/models/model if baked in, else MODEL_ID]
  MODEL_ID               Hugging Face id used when no model is baked in [mistralai/Ministral-8B-Instruct-2410]
  SERVED_MODEL_NAME      name clients send as "model" [mistral-8b]
  MAX_MODEL_LEN          maximum context length in tokens [16384]
  VLLM_HOST              listen address [127.0.0.1]
  VLLM_PORT              listen port [8001]
  VLLM_SHUTDOWN_TIMEOUT  seconds in-flight requests may take after SIGTERM [90]
  ENABLE_TOOL_CALLING    true or false: --enable-auto-tool-choice with TOOL_CALL_PARSER [true]
  TOOL_CALL_PARSER       vLLM tool parser of the model family [mistral]
  VLLM_EXTRA_ARGS        extra arguments, appended as given

  --print   print the command instead of running it
USAGE
}

print_only=false
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    usage
    exit 0
fi
if [[ "${1:-}" == "--print" ]]; then
    print_only=true
    shift
fi

baked_model=/models/model
if [[ -z "${MODEL:-}" ]]; then
    if [[ -f "${baked_model}/config.json" || -f "${baked_model}/params.json" ]]; then
        MODEL="${baked_model}"
    else
        MODEL="${MODEL_ID:-mistralai/Ministral-8B-Instruct-2410}"
    fi
fi

args=(
    serve "${MODEL}"
    --host "${VLLM_HOST:-127.0.0.1}"
    --port "${VLLM_PORT:-8001}"
    --served-model-name "${SERVED_MODEL_NAME:-mistral-8b}"
    --max-model-len "${MAX_MODEL_LEN:-16384}"
    --enable-request-id-headers
    --shutdown-timeout "${VLLM_SHUTDOWN_TIMEOUT:-90}"
    --disable-uvicorn-access-log
)
tool_calling="${ENABLE_TOOL_CALLING:-true}"
if [[ "${tool_calling}" != true && "${tool_calling}" != false ]]; then
    printf 'error: ENABLE_TOOL_CALLING must be true or false, got %s\n' "${tool_calling}" >&2
    exit 2
fi
if [[ "${tool_calling}" == true ]]; then
    args+=(--enable-auto-tool-choice --tool-call-parser "${TOOL_CALL_PARSER:-mistral}")
fi
if [[ -n "${VLLM_EXTRA_ARGS:-}" ]]; then
    read -r -a extra <<<"${VLLM_EXTRA_ARGS}"
    args+=("${extra[@]}")
fi
args+=("$@")

if [[ "${print_only}" == true ]]; then
    printf '%s\n' "vllm ${args[*]}"
    exit 0
fi
exec vllm "${args[@]}"
