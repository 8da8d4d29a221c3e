"""A loopback TCP forwarder a test can cut and restore: "S3 is unreachable" on demand.

One job: stand between a client (the sidecar's S3 client) and a real server
(moto) and make the network path fail and heal while both processes keep
running, so the server's state (buckets, objects) survives the outage.

- Up: every accepted connection is forwarded to the target byte for byte, both
  ways, until either side closes it.
- `cut()`: every open connection is reset (RST) at once, and until `restore()`
  every new connection is accepted and reset before a byte is read: the client
  sees "connection reset", as with an endpoint that went away.
- `delay_s`: while set, every chunk from the server waits that long before it
  is passed on (a slow S3: uploads stay in flight longer).
- The forwarder runs its own event loop in a daemon thread; `cut`, `restore`
  and `stop` return once the change is in effect. `resets` counts the
  connections reset while cut, i.e. the client's attempts during the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

_T = TypeVar("_T")
_CHUNK = 64 * 1024


class TcpCut:
    """Start with `start()`, point the client at `url`, then `cut()` / `restore()`; `stop()`."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._down = False
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.resets = 0
        self.forwarded = 0
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> TcpCut:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", 0))
        return self

    def cut(self) -> None:
        self._run(self._set_down(True))

    def restore(self) -> None:
        self._run(self._set_down(False))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _set_down(self, down: bool) -> None:
        self._down = down
        if down:
            for pair in list(self._open):
                for writer in pair:
                    _reset(writer)

    async def _shutdown(self) -> None:
        await self._set_down(True)
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.resets += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            return
        self.forwarded += 1
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                _pump(reader, up_writer, pair), _pump(up_reader, writer, pair, self)
            )
        finally:
            self._open.discard(pair)
            for end in pair:
                end.transport.abort()


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    delayed_by: TcpCut | None = None,
) -> None:
    """Copy one direction; on an error, tear down both so the other direction ends too."""
    try:
        while data := await source.read(_CHUNK):
            if delayed_by is not None and delayed_by.delay_s:
                await asyncio.sleep(delayed_by.delay_s)
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        for end in pair:
            end.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
