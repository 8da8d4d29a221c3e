"""Object bytes -> lines, streamed: gunzip and split without ever holding the whole object.

Invariants:

- At most `max_object_bytes` of content are produced per object (decompressed
  bytes for `.ndjson.gz`, raw bytes otherwise). The count is checked after
  every block of at most `BLOCK_BYTES`, so a gzip bomb is refused after
  inflating at most the cap plus one block: `ObjectTooLarge`, naming the
  setting, never an out-of-memory kill.
- At most `max_line_bytes` of one line are held. A longer line is not kept: its
  bytes are skipped up to the next newline and it is yielded as `None` (the
  caller reports it as a bad line), so its neighbours are unaffected.
- Line numbers are 0-based positions in the decompressed text, counted by
  `\\n`; a last line without `\\n` counts too. Empty lines are numbered but
  not yielded.
- Gzip members may be concatenated (and padded with NUL bytes between them, as
  `gzip.decompress` allows); a corrupt or truncated stream is
  `UnreadableObject`.

Memory per object: one input chunk, one output block, one held line.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

GZIP_WBITS = 31  # zlib: expect and check a gzip header and trailer
BLOCK_BYTES = 1 << 20


class UnreadableObject(ValueError):
    """The object's bytes cannot be split into lines (corrupt or truncated gzip, too large)."""


class ObjectTooLarge(UnreadableObject):
    """The object's content exceeds `MAX_OBJECT_BYTES`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"content is more than {limit} bytes (MAX_OBJECT_BYTES); refused while streaming"
        )


def _counted(blocks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for block in blocks:
        total += len(block)
        if total > limit:
            raise ObjectTooLarge(limit)
        yield block


def _inflate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompressed blocks of at most BLOCK_BYTES from gzip'd chunks (members concatenated)."""
    inflater = None
    try:
        for chunk in chunks:
            data = chunk
            while data:
                if inflater is None:
                    data = data.lstrip(b"\0")  # padding between members
                    if not data:
                        break
                    inflater = zlib.decompressobj(GZIP_WBITS)
                block = inflater.decompress(data, BLOCK_BYTES)
                if block:
                    yield block
                # a full block may leave output pending inside zlib with no input left
                while not inflater.eof and not inflater.unconsumed_tail and block:
                    block = inflater.decompress(b"", BLOCK_BYTES)
                    if block:
                        yield block
                if inflater.eof:
                    data, inflater = inflater.unused_data, None
                else:
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise UnreadableObject(f"gzip stream unreadable: {exc}") from None
    if inflater is not None:
        raise UnreadableObject("gzip stream truncated: no end-of-stream marker")


def content(chunks: Iterable[bytes], gzipped: bool, max_object_bytes: int) -> Iterator[bytes]:
    """The object's content in blocks; raises ObjectTooLarge past the cap."""
    return _counted(_inflate(chunks) if gzipped else chunks, max_object_bytes)


def split_lines(blocks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without `\\n`) for every non-empty line; None for a line over the cap."""
    number = 0  # of the line not yet ended
    held: list[bytes] = []
    held_bytes = 0
    too_long = False
    for block in blocks:
        pieces = block.split(b"\n")
        last = len(pieces) - 1
        if last:
            line = b"".join([*held, pieces[0]]) if held else pieces[0]
            if too_long or len(line) > max_line_bytes:
                yield number, None
            elif line:
                yield number, line
            held, held_bytes, too_long = [], 0, False
            # empty lines are skipped in one comprehension: a flood of them stays cheap
            for index in [i for i in range(1, last) if pieces[i]]:
                piece = pieces[index]
                yield number + index, None if len(piece) > max_line_bytes else piece
            number += last
        tail = pieces[last]
        if tail and not too_long:
            held.append(tail)
            held_bytes += len(tail)
            if held_bytes > max_line_bytes:
                held, held_bytes, too_long = [], 0, True
    if held or too_long:
        yield number, None if too_long else b"".join(held)
