#!/usr/bin/env bash
# End-to-end check: one real request through the public endpoint, then its DynamoDB item.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/smoke-test.sh --endpoint URL [options]

Sends one chat completion with the audit headers and a fresh x-request-id to
the public endpoint, checks the answer (HTTP 200, non-empty content, the same
x-request-id echoed), then polls DynamoDB until the audit item of that request
exists (partition project#<project>, same requestId). Exits 0 when both hold;
otherwise exits 1 with what was missing and where to look.

Options:
  --endpoint URL     base URL in front of /v1 (API Gateway stage URL, the NLB,
                     or http://127.0.0.1:8000 for compose) (required)
  --api-key KEY      sent as x-api-key [$LLM_API_KEY]
  --model NAME       served model name [$SMOKE_MODEL or mistral-8b]
  --project NAME     x-llm-project, the item's partition [smoke-test]
  --user NAME        x-llm-user [smoke-test]
  --table NAME       audit table [$TABLE_NAME or CentralLLMAudit]
  --timeout SECONDS  how long to wait for the item [180]
  --region REGION    [$AWS_REGION or eu-central-1]
  -h, --help         this help
USAGE
}

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-${DEFAULT_REGION}}}"
endpoint=""
api_key="${LLM_API_KEY:-}"
model="${SMOKE_MODEL:-mistral-8b}"
project="smoke-test"
user="smoke-test"
table="${TABLE_NAME:-CentralLLMAudit}"
timeout_s=180

while [[ $# -gt 0 ]]; do
    case "$1" in
        --endpoint) endpoint="${2%/}"; shift 2 ;;
        --api-key) api_key="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --project) project="$2"; shift 2 ;;
        --user) user="$2"; shift 2 ;;
        --table) table="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --region) region="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "${endpoint}" ]] || { usage >&2; die "--endpoint is required"; }
need aws curl python3

request_id="smoke-$(date -u +%Y%m%dT%H%M%S)-${RANDOM}${RANDOM}"
# Items sort by their request's start time; a margin covers clock skew.
since="$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) - d.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S"))')"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

body="$(python3 -c 'import json, sys; print(json.dumps({"model": sys.argv[1], "max_tokens": 16, "messages": [{"role": "user", "content": "Reply with the single word: pong"}]}))' "${model}")"
curl_args=(-sS -o "${work}/body" -D "${work}/headers" -w '%{http_code}' --max-time 120
    -H 'content-type: application/json'
    -H "x-request-id: ${request_id}"
    -H "x-llm-source: smoke-test"
    -H "x-llm-user: ${user}"
    -H "x-llm-request-type: smoke"
    -H "x-llm-project: ${project}"
    --data "${body}")
if [[ -n "${api_key}" ]]; then
    curl_args+=(-H "x-api-key: ${api_key}")
fi
log "POST ${endpoint}/v1/chat/completions (x-request-id ${request_id})"
status="$(curl "${curl_args[@]}" "${endpoint}/v1/chat/completions")" \
    || die "no answer from ${endpoint} (network, DNS or TLS): the request never reached the service"
[[ "${status}" == "200" ]] \
    || die "HTTP ${status} from ${endpoint}: $(head -c 500 "${work}/body")"

answer="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["choices"][0]["message"]["content"] or "")' \
    "${work}/body" 2>/dev/null)" || die "HTTP 200 but not a chat completion: $(head -c 500 "${work}/body")"
[[ -n "${answer//[[:space:]]/}" ]] || die "HTTP 200 but the answer is empty"
echoed="$(tr -d '\r' <"${work}/headers" | awk -F': ' 'tolower($1) == "x-request-id" {print $2}' | tail -n 1)"
[[ "${echoed}" == "${request_id}" ]] \
    || die "the response's x-request-id is '${echoed}', not ${request_id}: is the audit sidecar in the path?"
log "answer received (${#answer} characters); waiting for the audit item in ${table}"

values="$(python3 -c 'import json, sys; print(json.dumps({":id": {"S": "project#" + sys.argv[1]}, ":since": {"S": sys.argv[2]}, ":rid": {"S": sys.argv[3]}}))' \
    "${project}" "${since}" "${request_id}")"
deadline=$((SECONDS + timeout_s))
while true; do
    count="$(aws dynamodb query --region "${region}" --table-name "${table}" \
        --key-condition-expression 'id = :id AND createdAt >= :since' \
        --filter-expression 'requestId = :rid' \
        --expression-attribute-values "${values}" --query Count --output text)" \
        || die "cannot query table ${table} in ${region}"
    if [[ "${count}" != "0" && "${count}" != "None" ]]; then
        log "audit item found: ${table} id=project#${project} requestId=${request_id}"
        printf 'smoke test passed: request %s answered and audited\n' "${request_id}"
        exit 0
    fi
    if ((SECONDS >= deadline)); then
        die "request ${request_id} was answered, but no audit item (id=project#${project}, requestId=${request_id}) reached ${table} within ${timeout_s}s. Look at: the sidecar's logs and its AuditShippingStalled alarm (records not shipped to S3), the audit bucket's logs/ prefix (object written?), the llm-audit-events queue and the llm-audit-dlq queue (notification or ingestion failed), the llm-audit-ingest Lambda's errors."
    fi
    sleep 3
done
