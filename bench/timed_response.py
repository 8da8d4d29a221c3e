"""One response as the load generator sees it: llhttp's framing, SSE events counted and timed.

The framing is the sidecar's own reader (`sidecar_audit.http_response`, llhttp
through `httptools`): the project has one HTTP/1.1 response parser, and the
bench measures with it. This module is that reader's receiver plus what the
bench measures on top. `TimedResponse.feed(data, now)` takes bytes exactly as
they come off the socket, stamped with the time of the read, and returns True
once the response is complete. It keeps no body bytes; it only counts.

Invariants:
- The outcome does not depend on how the bytes were split into reads or chunks
  (a test re-splits responses at every offset).
- An SSE event is a blank-line terminator, `\\n\\n`, in the decoded body (what
  vLLM and LiteLLM send; `\\r\\n\\r\\n` is not counted); a run of newlines split
  across reads or chunks counts as if it had arrived in one piece.
- `first_content_at` is the read that carried the first event with non-empty
  `"content"` (a streamed token), not the opening role-only event; a pattern split
  across reads or chunks moves the mark to the next token's read.
- `finished_at` is the time of the read that carried the last byte (of the
  `eof()` call for a body delimited by the connection's end).
- `keep_alive` is llhttp's verdict (HTTP/1.1 without `Connection: close`, and
  framed by length or chunks): false means the connection must not be reused.
- Malformed framing, and any byte after the end of the response, raise
  `MalformedResponse`; the caller counts it and drops the connection.
- No reference cycle outlives a measured response (complete, malformed, cut
  short, or given up): the reader holds this object, and this object lets go of
  the reader at the end, on an error, or on `close()`. A cycle per request would
  leave the generator's memory to the cyclic GC, whose pauses would show up as
  the system's latency.
"""

from __future__ import annotations

import re

from sidecar_audit.http_response import MalformedResponse, ResponseHead, ResponseReader

__all__ = ["MalformedResponse", "TimedResponse"]

_CONTENT = re.compile(rb'"content":\s*"[^"]')


class TimedResponse:
    """Counts one response's SSE events and notes when its token and its end arrived."""

    __slots__ = (
        "_carry",
        "_reader",
        "_sse",
        "_trailing",
        "events",
        "finished_at",
        "first_content_at",
        "keep_alive",
        "now",
        "status",
    )

    def __init__(self, method: str = "POST") -> None:
        self._carry = False  # the body so far ends in a newline not yet paired into a `\n\n`
        self._sse = False
        self._trailing = False
        self.now = 0.0  # the time of the read being fed: the receiver calls happen inside it
        self.status = 0
        self.keep_alive = False
        self.events = 0
        self.first_content_at: float | None = None
        self.finished_at: float | None = None
        self._reader: ResponseReader | None = ResponseReader(self, method)

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def feed(self, data: bytes, now: float) -> bool:
        """Consume one read; True when the response is complete."""
        reader = self._reader
        if reader is None:
            self.close()
            raise MalformedResponse("bytes after the end of the response")
        self.now = now
        try:
            reader.feed(data)
        except BaseException:
            self.close()
            raise
        if self._trailing:
            self.close()
            raise MalformedResponse("bytes after the end of the response")
        return self.finished_at is not None

    def eof(self, now: float) -> bool:
        """The connection ended; True when that completes the response."""
        reader = self._reader
        if reader is not None:
            self.now = now
            reader.eof()
            self.close()
        return self.finished_at is not None

    def close(self) -> None:
        """Let go of the reader (and its parser): the response will not be read further."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    # --- the reader's receiver (called inside `feed` / `eof`) ---------------------------

    def on_head(self, head: ResponseHead) -> None:
        self.status = head.status
        content_type = head.header("content-type")
        self._sse = content_type is not None and content_type.lower().startswith(
            "text/event-stream"
        )

    def on_body(self, data: bytes) -> None:
        if not self._sse:
            return
        size = len(data)
        first = 1 if self._carry and data[:1] == b"\n" else 0
        events = first + data.count(b"\n\n", first)
        run = min(size - len(data.rstrip(b"\n")), size - first)
        self._carry = run % 2 == 1
        self.events += events
        if self.first_content_at is None and _CONTENT.search(data) is not None:
            self.first_content_at = self.now

    def on_end(self, clean: bool) -> None:
        self.keep_alive = clean
        self.finished_at = self.now
        self._reader = None  # the reader has dropped its parser; this breaks our cycle

    def on_trailing(self) -> None:
        self._trailing = True
