"""`python -m tests.deploy.run_handler MODULE.FUNCTION`: one Lambda invocation in its own process.

Reads the event (JSON) from stdin, calls the handler named as the stack's
`IngestFunction` names it (so a renamed handler is followed by regenerating
the template, nothing else), with a context that has 60 s left, and prints
`{"answer": ...}` or `{"raised": "<ExceptionName>", "message": ...}` on the
last line of stdout. The process's credentials and endpoint are the standard
AWS SDK variables, exactly what the Lambda runtime gives the function.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid


class _Context:
    function_name = "llm-audit-ingest"

    def __init__(self, budget_s: float) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + budget_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main(argv: list[str]) -> int:
    module_name, _, function_name = argv[1].rpartition(".")
    handler = getattr(importlib.import_module(module_name), function_name)
    event = json.load(sys.stdin)
    try:
        answer = handler(event, _Context(60.0))
    except Exception as exc:  # reported to the test, like Lambda reports a function error
        print(json.dumps({"raised": type(exc).__name__, "message": str(exc)}))
        return 1
    print(json.dumps({"answer": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
