#!/usr/bin/env bash
# Sourced by scripts/test and scripts/local-stack: the project's venv, made or reused.

# ensure_venv DIR: a venv at DIR that runs Python 3.11+; one that exists but cannot
# run (a moved checkout, another Python) is rebuilt.
ensure_venv() {
    local dir="$1"
    if [[ -x "${dir}/bin/python" ]] && "${dir}/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        return 0
    fi
    python3 -m venv --clear "${dir}"
}

# ensure_project_venv: .venv with this checkout installed (editable) with the test extra.
ensure_project_venv() {
    ensure_venv .venv
    .venv/bin/python -m pip install -q -e '.[test]'
}
