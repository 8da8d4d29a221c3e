#!/usr/bin/env bash
# Package the ingestion Lambda: the package lambda/llm_audit/, zipped at the archive's root.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/package-lambda.sh [--out PATH]

Zips the package lambda/llm_audit/ (its .py files, as llm_audit/<module>.py)
into one archive for the llm-audit-ingest function (python3.12, handler
llm_audit.ingest.handler; boto3 comes from the runtime). File times are fixed, so the same sources give the
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
package="${root}/lambda/llm_audit"
sources=("${package}"/*.py)
[[ ${#sources[@]} -gt 0 ]] || die "no lambda/llm_audit/*.py files found"
[[ -f "${package}/ingest.py" ]] || die "lambda/llm_audit/ingest.py (the handler) is missing"

staging="$(mktemp -d)"
trap 'rm -rf "${staging}"' EXIT
mkdir "${staging}/llm_audit"
cp "${sources[@]}" "${staging}/llm_audit/"
touch -d '2000-01-01T00:00:00Z' "${staging}/llm_audit" "${staging}"/llm_audit/*.py
mkdir -p "$(dirname "${out}")"
rm -f "${out}"
# Only the .py files, in a fixed order, without directory entries or extra
# attributes: the same sources always give the same bytes.
(cd "${staging}" && LC_ALL=C find llm_audit -maxdepth 1 -name '*.py' -print | LC_ALL=C sort \
    | zip -q -X -D "${out}" -@)
log "packaged ${#sources[@]} modules of llm_audit"
printf '%s\n' "${out}"
