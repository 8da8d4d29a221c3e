"""checkov on the generated template: clean, except the checks ecs/checkov-skips.txt justifies.

checkov lives in its own venv (`.venv-checkov/`, created by `scripts/test`):
installed into the project's venv it downgrades botocore and breaks
aiobotocore. The test finds it there, through `$CHECKOV`, or on PATH, and
skips saying how to install it otherwise. `--skip-download`: no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import ROOT, TEMPLATE

SKIPS = ROOT / "ecs" / "checkov-skips.txt"
_LINE = re.compile(r"^(CKV2?_AWS_\d+)\s+(\S.*)$")


def checkov_binary() -> str:
    for candidate in (os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov is not installed (scripts/test creates .venv-checkov with it)")
    return found


def justified_skips() -> dict[str, str]:
    skips: dict[str, str] = {}
    for line in SKIPS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"not 'CKV_AWS_N  why': {line!r}"
        check, why = match.groups()
        assert check not in skips, f"{check} listed twice"
        skips[check] = why
    return skips


def test_every_skip_has_a_one_line_reason() -> None:
    for check, why in justified_skips().items():
        assert len(why.split()) >= 6, (check, why)


def test_checkov_is_clean_with_the_justified_skips() -> None:
    result = subprocess.run(
        [
            checkov_binary(),
            "--file", str(TEMPLATE),
            "--framework", "cloudformation",
            "--skip-download",
            "--compact",
            "--quiet",
            "--skip-check", ",".join(justified_skips()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
