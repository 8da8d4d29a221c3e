#!/usr/bin/env bash
# Package the ingestion Lambda and deploy it through the stack.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/deploy-lambda.sh [deploy-stack options]

Zips the package lambda/llm_audit/, uploads the zip under a content-addressed
key and updates the stack's LambdaCodeKey, so CloudFormation replaces the
function's code; nothing else changes. Same options as scripts/deploy-stack.sh
(--stack, --region, --artifacts-bucket, ...).

Rollback: deploy the previous key again,
  scripts/deploy-stack.sh --param LambdaCodeKey=lambda/llm-audit-ingest-<old digest>.zip
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/deploy-stack.sh" --package-lambda "$@"
