"""Rewrite the configuration table in README.md from sidecar_audit.config.SETTINGS."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar_audit.config import describe_settings  # noqa: E402


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    table = re.compile(r"\| variable \| default \| meaning \|\n(\|.*\|\n)+")
    if not table.search(text):
        raise SystemExit("README.md has no configuration table to replace")
    readme.write_text(table.sub(lambda _: describe_settings() + "\n", text, count=1))


if __name__ == "__main__":
    main()
