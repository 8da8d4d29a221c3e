"""Structured logs of the ingestion: one JSON object per line on a text stream.

Invariants: every line has `ts` (UTC, ISO-8601), `level`, `logger` and `event`
plus the fields given; values that JSON cannot hold are written with `str()`.
Callers pass ids, keys, counts and error codes, never record content (prompts,
answers) or secrets. In Lambda the stream is stdout, which CloudWatch Logs
collects line by line under `/aws/lambda/llm-audit-ingest`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO


class JsonLog:
    """Writes JSON lines; `bound` fields (the invocation's request id) go on every line."""

    def __init__(self, stream: TextIO, logger: str = "llm-audit-ingest", **bound: Any) -> None:
        self._stream = stream
        self._base = {"logger": logger, **{k: v for k, v in bound.items() if v is not None}}

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "event": event,
            **self._base,
            **fields,
        }
        self._stream.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
        self._stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)
