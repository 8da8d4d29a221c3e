#!/usr/bin/env bash
# Package the ingestion Lambda: the flat lambda/llm_audit_*.py files, zip -j.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/package-lambda.sh [--out PATH]

Zips lambda/llm_audit_*.py flat (zip -j) into one archive for the
llm-audit-ingest function (python3.12, handler llm_audit_ingest.handler; boto3
comes from the runtime). File times are fixed, so the same sources give the
same bytes and the same content-addressed S3 key. Prints the archive's path.

Options:
  --out PATH   where to write the zip [dist/llm-audit-ingest.zip]
  -h, --help   this help
USAGE
}

root="$(repo_root)"
out="${root}/dist/llm-audit-ingest.zip"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
need zip

shopt -s nullglob
sources=("${root}"/lambda/llm_audit_*.py)
[[ ${#sources[@]} -gt 0 ]] || die "no lambda/llm_audit_*.py files found"
[[ -f "${root}/lambda/llm_audit_ingest.py" ]] || die "lambda/llm_audit_ingest.py (the handler) is missing"

staging="$(mktemp -d)"
trap 'rm -rf "${staging}"' EXIT
cp "${sources[@]}" "${staging}/"
touch -d '2000-01-01T00:00:00Z' "${staging}"/*.py
mkdir -p "$(dirname "${out}")"
rm -f "${out}"
(cd "${staging}" && LC_ALL=C find . -maxdepth 1 -name 'llm_audit_*.py' -print | LC_ALL=C sort \
    | zip -q -X -j "${out}" -@)
log "packaged ${#sources[@]} modules"
printf '%s\n' "${out}"
