"""A recording HTTP proxy in front of moto that can act like a throttled DynamoDB table.

Real DynamoDB under pressure answers BatchWriteItem with some or all requests
in `UnprocessedItems`; moto never does. This proxy, a real HTTP server on
loopback, forwards every request to moto and records it; while `throttle`
says so, it forwards only part of a BatchWriteItem and answers the rest as
unprocessed, exactly in DynamoDB's wire format. The client under test talks
HTTP to it through the standard `AWS_ENDPOINT_URL_<SERVICE>` variables.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

BATCH_WRITE = "DynamoDB_20120810.BatchWriteItem"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

# A policy sees the call number (1-based) and how many put requests it holds, and
# answers how many of them moto should really get; the rest come back unprocessed.
Throttle = Callable[[int, int], int]


def no_throttle(_call: int, size: int) -> int:
    return size


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    target: str | None = None
    batch_keys: list[tuple[str, str]] = field(default_factory=list)


class AwsProxy:
    """Start with `start()`, point clients at `url`, stop with `stop()`."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.throttle: Throttle = no_throttle
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._batch_calls = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> AwsProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def batch_writes(self) -> list[Seen]:
        return [s for s in self.seen if s.target == BATCH_WRITE]

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            conn.close()

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Record the request, then answer it: throttled, or as moto answers."""
        target = headers.get("X-Amz-Target") or headers.get("x-amz-target")
        seen = Seen(method, path, {k.lower(): v for k, v in headers.items()}, target)
        if target == BATCH_WRITE:
            seen.batch_keys = _put_keys(body)
        with self._lock:
            self.seen.append(seen)
        throttled = self._throttled_batch(headers, body) if target == BATCH_WRITE else None
        if throttled is not None:
            return throttled[0], [("Content-Type", "application/x-amz-json-1.0")], throttled[1]
        return self._forward(method, path, headers, body)

    def _throttled_batch(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes] | None:
        """Forward part of a BatchWriteItem; None when the policy lets it all through."""
        with self._lock:
            self._batch_calls += 1
            call = self._batch_calls
        [(table, puts)] = json.loads(body)["RequestItems"].items()
        allowed = self.throttle(call, len(puts))
        if allowed >= len(puts):
            return None
        if allowed > 0:
            forwarded = json.dumps({"RequestItems": {table: puts[:allowed]}}).encode()
            status, _, _ = self._forward(
                "POST", "/", {**headers, "Content-Length": str(len(forwarded))}, forwarded
            )
            if status != 200:
                return status, b'{"__type": "InternalServerError"}'
        return 200, json.dumps({"UnprocessedItems": {table: puts[allowed:]}}).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                status, reply_headers, payload = proxy.respond(
                    self.command, self.path, headers, body
                )
                self.send_response(status)
                for name, value in reply_headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = _any

        return Handler


def _put_keys(body: bytes) -> list[tuple[str, str]]:
    """(id, createdAt) of every put request in a BatchWriteItem body."""
    [(_, puts)] = json.loads(body)["RequestItems"].items()
    return [
        (p["PutRequest"]["Item"]["id"]["S"], p["PutRequest"]["Item"]["createdAt"]["S"])
        for p in puts
    ]
