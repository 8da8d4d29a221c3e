"""`python -m ecs.stackgen [--check]`: render ecs/central-llm-stack.json from its sources.

Without options the template is (re)written. With `--check` nothing is written
and the exit code is 1 when the checked-in template differs from a fresh
render (CI runs this through the test suite), 2 when a source is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ecs.stackgen.sources import REPO_ROOT, TEMPLATE, SourceError, load_sources
from ecs.stackgen.template import render_template


def render_text(root: Path) -> str:
    return json.dumps(render_template(load_sources(root)), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecs.stackgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the template is stale")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        text = render_text(args.root)
    except SourceError as exc:
        print(f"ecs.stackgen: {exc}", file=sys.stderr)
        return 2
    target = args.root / TEMPLATE
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(
                f"ecs.stackgen: {TEMPLATE} is stale; run `python -m ecs.stackgen` and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {TEMPLATE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
