"""Reading one HTTP/1.1 response, sans I/O: bytes in, head / body / end calls out.

The parsing is llhttp's (through `httptools`, the parser uvicorn uses), so
framing edge cases — chunk extensions, trailers, obs-fold, duplicate or
non-ASCII Content-Length — are decided by a maintained parser, not by us. This
module adds the three things a proxy's client needs on top:

- interim (1xx) responses are skipped; the first final response is *the* answer;
- a response to HEAD ends with its head whatever Content-Length says;
- the end is exact: `Receiver.end(clean)` is called once, and `clean` is true
  only when the message was framed (Content-Length or chunked), the server
  allows keep-alive, and no byte followed the message. Anything else makes the
  connection unfit for another exchange (see upstream.py).

A body delimited by the end of the connection ends when the caller says so
(`eof()`), never clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httptools

MAX_HEAD_BYTES = 64 * 1024


class MalformedResponse(Exception):
    """The bytes are not an HTTP/1.1 response we can relay."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    raw_headers: list[tuple[str, str]]
    content_length: int | None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None


class Receiver(Protocol):
    def on_head(self, head: ResponseHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self, clean: bool) -> None: ...
    def on_trailing(self) -> None: ...


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing the rest of the input."""


class ResponseReader:
    """One response's parser; `feed()` bytes as they arrive, in order."""

    __slots__ = (
        "_ended",
        "_head_bytes",
        "_headers",
        "_interim",
        "_method_head",
        "_parser",
        "_reason",
        "_receiver",
        "_started",
        "_until_close",
        "on_body",
    )

    def __init__(self, receiver: Receiver, method: str) -> None:
        self._receiver = receiver
        # Body bytes go straight to the receiver: one Python call per chunk from llhttp.
        # (Nothing can arrive after the end: a second message or HEAD's stop raises _Stop.)
        self.on_body = receiver.on_body
        self._method_head = method.upper() == "HEAD"
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._reason = ""
        self._interim = False
        self._until_close = False
        self._started = False  # the final response's head was delivered
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def started(self) -> bool:
        return self._started

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises `MalformedResponse` if it is not HTTP/1.1 (before the end)."""
        parser = self._parser
        if parser is None:  # ended (or closed): any byte now is one too many
            if data:
                self._receiver.on_trailing()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; unwrap ours, re-raise a defect as is.
            # No local name for the stop, and no traceback kept on it: its traceback holds
            # this frame (through the callbacks' f_back) and httptools keeps the exception;
            # either would close a reference cycle per stop (HEAD, bytes after the end).
            if isinstance(exc.__context__, _Stop):
                exc.__context__.__traceback__ = None
                return
            if exc.__context__ is not None:
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            if not self._ended:
                raise MalformedResponse(str(exc)) from None
            self._receiver.on_trailing()  # bytes after the end that are not even HTTP
        finally:
            if self._ended:
                self.close()

    def close(self) -> None:
        """Drop the parser. It holds this reader's callbacks and the reader holds it: a
        reference cycle that only the cyclic GC would free, one per response (and the
        GC's pauses are the event loop's pauses). Called at the end and by a connection
        that gives up on the response, possibly from a callback in the middle of
        `feed()`: llhttp then goes on with the rest of the buffer, and the head and
        end callbacks stop it there (nothing is reported after `close()`)."""
        self._parser = None

    def eof(self) -> bool:
        """The connection ended: True if that completes a close-delimited body."""
        if self._ended or not (self._started and self._until_close):
            return False
        self._end(clean=False)
        self.close()
        return True

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ended:
            self._trailing()

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._live_parser().get_status_code()
        if 100 <= status < 200:
            self._interim = True
            return
        length: int | None = None
        chunked = False
        for key, value in self._headers:
            lower = key.lower()
            if lower == "content-length":
                length = int(value)  # llhttp has checked the digits and duplicates
            elif lower == "transfer-encoding":
                chunked = True
        self._until_close = (
            not chunked and length is None and status not in (204, 304) and not self._method_head
        )
        head = ResponseHead(status, self._reason.strip(), self._headers, length)
        self._started = True
        self._receiver.on_head(head)
        if self._method_head:  # no body follows, whatever the headers say
            self._live_parser()  # (unless the receiver gave up on the response just now)
            self._end(clean=False)
            raise _Stop

    def on_message_complete(self) -> None:
        if self._interim:  # the real answer follows on the same connection
            self._interim = False
            self._headers = []
            self._head_bytes = 0
            self._reason = ""
            return
        if not self._ended:
            self._end(clean=self._live_parser().should_keep_alive())

    # --- internals ------------------------------------------------------------------------

    def _live_parser(self) -> httptools.HttpResponseParser:
        """The parser, from inside its own callbacks; a receiver that closed the reader
        earlier in the same buffer stops the parsing here (nothing is reported after)."""
        if self._parser is None:
            raise _Stop
        return self._parser

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise MalformedResponse("response head too large")

    def _end(self, *, clean: bool) -> None:
        self._ended = True
        self._receiver.on_end(clean)

    def _trailing(self) -> None:
        """Bytes after the end of the message: the connection cannot carry another exchange."""
        self._receiver.on_trailing()
        raise _Stop
