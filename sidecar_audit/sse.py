"""Server-sent events: an incremental decoder and the usage-chunk filter, both pure.

`SSEDecoder.feed(bytes) -> list[bytes]` returns the `data` payload of every event
completed by the bytes fed so far, following the WHATWG event-stream rules that
matter here: lines end in LF, CRLF or CR; a blank line dispatches the event;
lines starting with `:` are comments (vLLM and gateways send `: keep-alive`);
several `data:` lines of one event are joined with LF; an event without data is
not dispatched. Its output does not depend on how the stream was split into
chunks (tested by re-splitting fixtures at every byte offset).

`UsageChunkFilter` turns the stream vLLM sent to a request the sidecar asked
usage for back into the stream the client asked for (see its docstring).
`terminal_detector(path)` says which chunk completes a stream's terminal event,
so the proxy can hold exactly that chunk until the record is spooled.
"""

from __future__ import annotations

from typing import Any

import orjson

_USAGE = b'"usage"'
_FINISH = b'"finish_reason":"'


class SSEDecoder:
    """Incremental event-stream decoder; see the module docstring for the rules."""

    __slots__ = ("_buf", "_data", "_has_data", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._has_data = False
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if not (self._buf or self._has_data or self._pending_cr) and b"\r" not in chunk:
            simple = self._feed_simple(chunk)
            if simple is not None:
                return simple
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        size = len(buf)
        while start < size:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else size)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < size and buf[nxt] == 0x0A:
                    nxt += 1
                elif nxt == size:
                    self._pending_cr = True
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[start:end], events)
            start = nxt
        self._buf = buf[start:]
        return events

    def _feed_simple(self, chunk: bytes) -> list[bytes] | None:
        """The common case, vLLM's own framing (`data: <json>` and a blank line), split in C.

        Returns None, having changed nothing, when the chunk holds anything else
        (multi-line data, other fields, CR line ends): the general path takes it.
        """
        parts = chunk.split(b"\n\n")
        rest = parts.pop()
        events: list[bytes] = []
        for part in parts:
            if b"\n" in part:
                return None
            if part.startswith(b"data: "):
                events.append(part[6:])
            elif part.startswith(b"data:"):
                events.append(part[5:])
            elif part and part[0] != 0x3A:  # not empty, not a comment
                return None
        self._buf = rest
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._has_data:
                events.append(b"\n".join(self._data))
            self._data = []
            self._has_data = False
            return
        if line[0] == 0x3A:  # ':' comment
            return
        name, sep, value = line.partition(b":")
        if name != b"data":
            return  # event:, id:, retry: carry nothing the record needs
        if sep and value.startswith(b" "):
            value = value[1:]
        self._data.append(value)
        self._has_data = True


def _payload(event: bytes) -> bytes | None:
    """The data of a single complete event, or None."""
    payloads = SSEDecoder().feed(event)
    return payloads[0] if len(payloads) == 1 else None


def _json(payload: bytes | None) -> dict[str, Any] | None:
    if payload is None:
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _is_terminal(obj: dict[str, Any] | None) -> bool:
    """A choice chunk with a finish reason: vLLM stamps the fingerprint on these."""
    if obj is None or "system_fingerprint" in obj:
        return False
    choices = obj.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") is not None for c in choices
    )


# Fields vLLM's stream-chunk models declare after `system_fingerprint` (vLLM 0.33
# protocol.py field order); the fingerprint goes before the first one present.
_FIELDS_AFTER_FINGERPRINT = (
    b',"prompt_token_ids":',
    b',"prompt_text":',
    b',"metrics":',
    b',"kv_transfer_params":',
)


def _with_fingerprint(event: bytes, fingerprint: Any) -> bytes:
    """Add `"system_fingerprint"` to the event's JSON at the place vLLM's field order gives it."""
    if not isinstance(fingerprint, str):
        return event
    choices = event.find(b'"choices":[')
    end = event.rfind(b"}")
    if choices < 0 or end < 0:
        return event
    at = end
    tail = _array_end(event, choices + len(b'"choices":'))
    for name in _FIELDS_AFTER_FINGERPRINT:
        found = event.find(name, tail)
        if 0 <= found < at:
            at = found
    return event[:at] + b',"system_fingerprint":' + orjson.dumps(fingerprint) + event[at:]


def _array_end(data: bytes, start: int) -> int:
    """Offset just past the JSON array opening at `start` (strings and nesting respected)."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(data)):
        byte = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
            if depth == 0:
                return i + 1
    return len(data)


class FingerprintMemo:
    """The upstream's `system_fingerprint`, learned from the usage chunks it sends.

    vLLM computes one fingerprint per server at start (`serve/utils/fingerprint.py`)
    and uses it on every chat and completion answer, so once one usage chunk has
    shown it, terminal chunks can be stamped the moment they arrive. `known` is
    False until then; `value` is None when the server sends none
    (`--fingerprint-mode none`). One per proxy; the sidecar's only shared state.
    """

    __slots__ = ("known", "value")

    def __init__(self) -> None:
        self.known = False
        self.value: str | None = None

    def learn(self, fingerprint: Any) -> None:
        self.known = True
        self.value = fingerprint if isinstance(fingerprint, str) else None


class UsageChunkFilter:
    """Gives the client the stream vLLM would have sent had the sidecar not asked for usage.

    With `include_usage` on, vLLM (chat `serving.py:826-834`, completions
    `serving.py:468-476`) adds a usage-only chunk (`"choices":[]`) after the last
    choice and moves `system_fingerprint` from each choice's terminal chunk (the
    one with a `finish_reason`) to that usage chunk. Undone here, live:

    - every event passes through as it arrives, for any `n` and any number of
      prompts; only the usage-only chunk is removed;
    - a terminal chunk gets the fingerprint at vLLM's field position as it passes,
      when the memo knows it. Before the first usage chunk ever seen (a new
      sidecar), a terminal chunk is held until the usage chunk, the other
      choices' data events streaming on meanwhile; comments (`: keep-alive`) that
      come after a held chunk wait behind it, so they never precede an event vLLM
      sent before them. The memo then learns the fingerprint.
    - with `--enable-force-include-usage` vLLM sends usage on every chunk and the
      usage chunk whatever the request said; the first choice chunk carrying usage
      shows it, and the filter then passes everything through untouched.

    If no usage chunk comes (an error ended the stream), held events are released
    as they were. An unfinished event waits for its blank line.
    """

    __slots__ = ("_held", "_memo", "_partial", "_passthrough")

    def __init__(self, memo: FingerprintMemo | None = None) -> None:
        self._partial = b""
        self._held: list[bytes] = []
        self._memo = memo if memo is not None else FingerprintMemo()
        self._passthrough = False

    def feed(self, chunk: bytes) -> bytes:
        if self._passthrough:
            return chunk
        data = self._partial + chunk if self._partial else chunk
        cut = _last_event_end(data)
        if cut < 0:
            self._partial = data
            return b""
        complete, self._partial = data[:cut], data[cut:]
        # The common case, a token chunk with nothing to stamp or remove: C scans only.
        # (Not while a terminal chunk is held: what ends the stream must queue behind it.)
        if not self._held and _FINISH not in complete and _USAGE not in complete:
            return complete
        out: list[bytes] = []
        for event in _split_events(complete):
            obj = _json(_payload(event))
            if self._held and obj is None:
                # `[DONE]`, a `: keep-alive` comment, anything not a JSON object: never
                # ahead of a held terminal chunk (stamping leaves such events as they are).
                self._held.append(event)
                continue
            if obj is None or self._passthrough:
                out.append(event)
                continue
            choices = obj.get("choices")
            if choices == [] and obj.get("usage"):
                fingerprint = obj.get("system_fingerprint")
                self._memo.learn(fingerprint)
                out.extend(_with_fingerprint(e, fingerprint) for e in self._held)
                self._held.clear()
            elif choices and "usage" in obj:
                # Forced usage: vLLM's stream is already what the client gets.
                self._passthrough = True
                out.extend(self._held)
                self._held.clear()
                out.append(event)
            elif _is_terminal(obj):
                if self._memo.known:
                    out.append(_with_fingerprint(event, self._memo.value))
                else:
                    self._held.append(event)
            elif choices is None and self._held:
                # Not a chunk (vLLM's error event): no usage chunk will come; what was
                # held goes first, as it was, to keep vLLM's order.
                out.extend(self._held)
                self._held.clear()
                out.append(event)
            else:
                out.append(event)
        if self._passthrough and self._partial:
            out.append(self._partial)
            self._partial = b""
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held when the stream ends."""
        out = b"".join(self._held) + self._partial
        self._held.clear()
        self._partial = b""
        return out


_TERMINAL_TYPES = {
    "/v1/responses": (b"response.completed", b"response.incomplete", b"response.failed", b"error"),
    "/v1/messages": (b"message_stop", b"error"),
}


_DONE_EVENT = b"data: [DONE]\n\n"
# The marker must start an event: the blank line of the event before it, or nothing.
_DONE_AFTER_EVENT = b"\n\n" + _DONE_EVENT
_DONE_TAIL = len(_DONE_AFTER_EVENT)


class TerminalDetector:
    """Says which chunk of a stream completes its terminal event; pure, incremental.

    `feed(chunk) -> bool` is True for the chunk holding the blank line that ends
    the stream's terminal event: `data: [DONE]` on chat and completions, the
    `response.completed` / `.incomplete` / `.failed` or `error` event on
    `/v1/responses`, `message_stop` or `error` on `/v1/messages` (Anthropic sends
    no `[DONE]`). The answer does not depend on how the stream was split.
    """

    __slots__ = ("_decoder", "_lf_only", "_partial", "_tail", "_types")

    def __init__(self, types: tuple[bytes, ...] | None) -> None:
        self._decoder = SSEDecoder()
        self._types = types
        self._tail = b""
        self._partial = b""  # LF-only bytes after the last blank line, for a switch to decoding
        self._lf_only = types is None

    def feed(self, chunk: bytes) -> bool:
        if not chunk:
            return False
        if self._lf_only:
            if b"\r" not in chunk:
                # `[DONE]` streams in vLLM's own framing (LF only), on the hot path: the
                # terminal chunk is the one that ends the bytes seen so far with
                # `data: [DONE]` and its blank line, whatever the split (the tail keeps
                # the bytes a split may have left behind). No decoding per chunk.
                window = self._tail + chunk
                self._tail = window[-_DONE_TAIL:]
                cut = chunk.rfind(b"\n\n")
                self._partial = chunk[cut + 2 :] if cut >= 0 else self._partial + chunk
                return window.endswith(_DONE_AFTER_EVENT) or window == _DONE_EVENT
            # CR framing: decode from here on, starting with the unfinished event the LF-only
            # bytes left (a read boundary is not an event boundary: TCP splits anywhere).
            self._lf_only = False
            chunk, self._partial = self._partial + chunk, b""
        found = False
        for payload in self._decoder.feed(chunk):
            found = self._is_terminal(payload) or found
        return found

    def _is_terminal(self, payload: bytes) -> bool:
        if self._types is None:
            return payload == b"[DONE]"
        if not any(t in payload for t in self._types):
            return False
        obj = _json(payload)
        if obj is None:
            return False
        kind = obj.get("type")
        return isinstance(kind, str) and kind.encode() in self._types


def terminal_detector(path: str) -> TerminalDetector:
    """The detector for the stream of a request to `path` (chat/completions: `[DONE]`)."""
    return TerminalDetector(_TERMINAL_TYPES.get(path))


def _last_event_end(data: bytes) -> int:
    """Offset just past the last blank line (event terminator), or -1."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def _split_events(block: bytes) -> list[bytes]:
    """Split complete events, each keeping its own terminator."""
    events: list[bytes] = []
    start = 0
    while start < len(block):
        lf = block.find(b"\n\n", start)
        crlf = block.find(b"\r\n\r\n", start)
        if crlf >= 0 and (lf < 0 or crlf < lf):
            end = crlf + 4
        elif lf >= 0:
            end = lf + 2
        else:
            end = len(block)
        events.append(block[start:end])
        start = end
    return events
