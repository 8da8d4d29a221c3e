"""An incremental HTTP/1.1 response reader for the load generator: framing, SSE events, timings.

`ResponseReader.feed(data, now)` takes bytes exactly as they come off the
socket and returns True once the response is complete. It understands what the
systems under test send: a status line and headers, then a body framed by
`Transfer-Encoding: chunked`, by `Content-Length`, or by the connection's end
(`eof()`). It keeps no body bytes; it only counts.

Invariants:
- The outcome does not depend on how the bytes were split into reads (a test
  re-splits responses at every offset).
- An SSE event is a blank-line terminator, `\\n\\n`, in the decoded body (what
  vLLM and LiteLLM send; `\\r\\n\\r\\n` is not counted); a run of newlines split
  across reads or chunks counts as if it had arrived in one piece.
- `first_content_at` is the read that carried the first event with non-empty
  `"content"` (a streamed token), not the opening role-only event; a pattern split
  across reads moves the mark to the next token's read.
- `finished_at` is the time of the read that carried the last byte.
- Malformed framing raises `ProtocolError`; the caller counts it and drops the
  connection.
"""

from __future__ import annotations

import re

_CONTENT = re.compile(rb'"content":\s*"[^"]')
_MAX_HEAD = 64 * 1024


class ProtocolError(ValueError):
    """The bytes are not an HTTP/1.1 response this reader can follow."""


# Reader states (plain ints: compared on every read of the hot loop).
_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """Counts one response's body bytes and SSE events and notes when they arrived."""

    __slots__ = (
        "_buf",
        "_carry",
        "_remaining",
        "_sse",
        "_state",
        "body_bytes",
        "events",
        "finished_at",
        "first_byte_at",
        "first_content_at",
        "keep_alive",
        "status",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0
        self._carry = False  # the body so far ends in a newline not yet paired into a `\n\n`
        self._sse = False
        self.status = 0
        self.keep_alive = True
        self.events = 0
        self.body_bytes = 0
        self.first_byte_at: float | None = None
        self.first_content_at: float | None = None
        self.finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, now: float) -> bool:
        """Consume one read; True when the response is complete (extra bytes are an error)."""
        if self.first_byte_at is None:
            self.first_byte_at = now
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while pos < end:
            state = self._state
            if state in (_CHUNK_DATA, _LENGTH):
                stop = min(end, pos + self._remaining)
                self._body(buf, pos, stop, now)
                self._remaining -= stop - pos
                pos = stop
                if self._remaining:
                    break
                self._state = _CHUNK_END if state == _CHUNK_DATA else _DONE
            elif state == _UNTIL_CLOSE:
                self._body(buf, pos, end, now)
                pos = end
            elif state == _DONE:
                raise ProtocolError("bytes after the end of the response")
            else:
                advanced = self._framing(buf, pos, end)
                if advanced < 0:
                    break
                pos = advanced
        self._buf = buf[pos:] if pos < end else b""
        if len(self._buf) > _MAX_HEAD:
            raise ProtocolError("header or chunk-size line too long")
        if self._state == _DONE:
            self.finished_at = now
            return True
        return False

    def eof(self, now: float) -> bool:
        """The connection ended; True when that completes a close-delimited body."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            self.finished_at = now
            return True
        return self._state == _DONE

    def _framing(self, buf: bytes, pos: int, end: int) -> int:
        """Parse one head, chunk-size, chunk-end or trailer line; -1 when more bytes are needed."""
        state = self._state
        if state == _HEAD:
            cut = buf.find(b"\r\n\r\n", pos, end)
            if cut < 0:
                return -1
            self._head(buf[pos:cut])
            return cut + 4
        if state == _CHUNK_END:
            if end - pos < 2:
                return -1
            if buf[pos : pos + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            self._state = _CHUNK_SIZE
            return pos + 2
        cut = buf.find(b"\r\n", pos, end)
        if cut < 0:
            return -1
        line = buf[pos:cut]
        if state == _CHUNK_SIZE:
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {line[:20]!r}") from None
            self._remaining = size
            self._state = _CHUNK_DATA if size else _TRAILER
        elif not line:  # the blank line after the (usually absent) trailers
            self._state = _DONE
        return cut + 2

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {lines[0][:40]!r}")
        self.status = int(parts[1])
        self.keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key, value = name.strip().lower(), value.strip().lower()
            if key == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif key == b"content-length":
                length = int(value)
            elif key == b"connection":
                self.keep_alive = value != b"close" and (self.keep_alive or value == b"keep-alive")
            elif key == b"content-type":
                self._sse = value.startswith(b"text/event-stream")
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._state = _DONE
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False

    def _body(self, buf: bytes, start: int, stop: int, now: float) -> None:
        if stop <= start:
            return
        self.body_bytes += stop - start
        if not self._sse:
            return
        first = start
        events = 0
        if self._carry and buf[start] == 0x0A:
            events, first = 1, start + 1
        events += buf.count(b"\n\n", first, stop)
        run, i = 0, stop - 1
        while i >= first and buf[i] == 0x0A:
            run, i = run + 1, i - 1
        self._carry = run % 2 == 1
        self.events += events
        if self.first_content_at is None and _CONTENT.search(buf, start, stop):
            self.first_content_at = now
