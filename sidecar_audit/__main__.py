"""`python -m sidecar_audit`: validate the environment, then serve until SIGTERM.

`python -m sidecar_audit --settings` prints the configuration table (Markdown).
Exit codes: 0 after a clean stop, 1 when the audit spool failed (the next
process recovers it from disk), 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import Config, ConfigError, describe_settings
from .logjson import setup_logging
from .workers import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar_audit",
        description="Audit sidecar: proxies vLLM's OpenAI API and ships an audit record per "
        "request to S3. Configured by environment variables (see --settings).",
    )
    parser.add_argument(
        "--settings", action="store_true", help="print the configuration table and exit"
    )
    args = parser.parse_args(argv)
    if args.settings:
        print(describe_settings())
        return 0
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        print(f"sidecar_audit: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    code = serve(config)
    logging.getLogger("sidecar_audit").info("sidecar stopped", extra={"exitCode": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
