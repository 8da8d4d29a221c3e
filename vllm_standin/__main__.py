"""`python -m vllm_standin`: parse options (CLI over environment), pick the loop, serve."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from vllm_standin.options import StandinOptions, parse_options
from vllm_standin.server import serve_until_signalled


def _run(options: StandinOptions) -> None:
    if options.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if options.loop == "uvloop":
                raise
        else:
            uvloop.run(serve_until_signalled(options))
            return
    asyncio.run(serve_until_signalled(options))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv, os.environ)
    _run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
