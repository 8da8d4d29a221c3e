"""The type checker over the shipped packages: a type error fails the suite like a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["sidecar_audit", "central_llm_ops", "vllm_standin", "lambda/llm_audit", "bench"]

pytestmark = pytest.mark.timeout(600)


def test_mypy_is_clean_on_the_shipped_packages() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *PACKAGES],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
