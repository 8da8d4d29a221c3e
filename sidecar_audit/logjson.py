"""Logs as one JSON object per line on stdout.

Fields: `ts` (UTC ISO-8601), `level`, `logger`, `event` (the same schema as the
ingestion Lambda's logs), plus whatever the call
passed in `extra=` (request id, path, status, ...). Callers never pass prompt
text, answers or header values: the proxy logs ids, sizes and outcomes only.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import orjson

from .record import iso_utc

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            out.update(_exception_fields(record))
        return orjson.dumps(out, default=str).decode()


def _exception_fields(record: logging.LogRecord) -> dict[str, str]:
    """The exception's type and stack, and its message only when it is ours.

    A library's message may quote the input that upset it: aiohttp's
    bad-request errors print the raw request line or header, `Authorization`
    included. Frames name code, never data.
    """
    assert record.exc_info is not None
    exc_type, exc, tb = record.exc_info
    fields = {
        "exceptionType": getattr(exc_type, "__qualname__", str(exc_type)),
        "stack": "".join(traceback.format_tb(tb)) if tb is not None else "",
    }
    if record.name.startswith("sidecar_audit") and type(exc).__module__.startswith("sidecar_audit"):
        fields["exceptionMessage"] = str(exc)[:500]
    return fields


def setup_logging(level: str) -> None:
    """Route every logger (ours, aiohttp's, botocore's) through one JSON handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # What a LogRecord would otherwise look up on every call; the line carries none of it.
    logging.logThreads = False
    logging.logMultiprocessing = False
    if sys.version_info >= (3, 12):
        logging.logAsyncioTasks = False
    # aiohttp's access log would repeat our own per-request line; botocore is chatty.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
