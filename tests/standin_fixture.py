"""The vLLM stand-in (`python -m vllm_standin`) as a real process, for tests needing an upstream.

- `standin_session`: one process for the whole session (fast pace: TTFT 10 ms, ITL 2 ms;
  answers of 16 words as the CLI default; everything else vLLM's defaults).
- `standin`: the session process with its request journal cleared for this test.
- `start_standin(**options)`: a private process with other options (`ttft_ms`, `itl_ms`,
  `tokens`, `keepalive_s`, `model`, `enable_request_id_headers`, `max_model_len`,
  `journal_size`); stopped when the test ends.

Each yields a `Standin` with `.url`, `.requests(path=None)`, `.reset()`, `.stats()`,
and `.raw(method, path, body, headers)`: one request over a plain socket, answered as a
`RawReply` with the status, the headers and the body exactly as sent on the wire
(de-chunked, plus the list of HTTP chunk payloads — one per SSE event).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Proc, free_port, python_module, wait_http

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION_OPTIONS: dict[str, object] = {"ttft_ms": 10, "itl_ms": 2, "tokens": 16}
_FLAGS = {
    "model": "--model",
    "ttft_ms": "--ttft-ms",
    "itl_ms": "--itl-ms",
    "tokens": "--tokens",
    "keepalive_s": "--timeout-keep-alive",
    "max_model_len": "--max-model-len",
    "journal_size": "--journal-size",
    "vllm_version": "--vllm-version",
    "loop": "--loop",
    "sse_keep_alive_interval": "--sse-keep-alive-interval",
}


@dataclass(frozen=True)
class RawReply:
    """An HTTP/1.1 response as it was on the wire."""

    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes  # de-chunked when the response was chunked
    chunks: list[bytes]  # the HTTP chunk payloads; [] when not chunked

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(rest: bytes) -> list[bytes]:
    payloads: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return payloads
        payloads.append(rest[:size])
        if rest[size : size + 2] != b"\r\n":
            raise AssertionError(f"malformed chunk framing after {rest[:size]!r}")
        rest = rest[size + 2 :]


def raw_exchange(
    url: str, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
) -> RawReply:
    """Send one request with `Connection: close` and read the whole response."""
    parts = urllib.parse.urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", "Host: standin", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        received = []
        while data := sock.recv(65536):
            received.append(data)
    head, _, rest = b"".join(received).partition(b"\r\n\r\n")
    status_line, *field_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in field_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if fields.get("transfer-encoding") == "chunked":
        chunks = _dechunk(rest)
        return RawReply(status, fields, b"".join(chunks), chunks)
    return RawReply(status, fields, rest, [])


@dataclass
class Standin:
    """A running stand-in and the read-back of what it received."""

    url: str
    proc: Proc

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Journal entries, oldest first; only those for `path` when given."""
        query = f"?path={urllib.parse.quote(path)}" if path else ""
        return list(self._call("GET", f"/_standin/requests{query}"))

    def reset(self) -> None:
        self._call("DELETE", "/_standin/requests")

    def stats(self) -> dict[str, int]:
        return dict(self._call("GET", "/_standin/stats"))

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | object = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> RawReply:
        """One request over a socket; a non-bytes `body` is sent as JSON."""
        sent_headers = dict(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        return raw_exchange(self.url, method, path, body, sent_headers, timeout)

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        path: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """The first journal entry matching `predicate`, polling until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.requests(path):
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching request within {timeout}s: {self.requests(path)}"
                )
            time.sleep(0.02)


def header(entry: dict[str, Any], name: str) -> str | None:
    """A header of a journal entry by case-insensitive name (the last one if repeated)."""
    found = None
    for key, value in entry["header_list"]:
        if key.lower() == name.lower():
            found = value
    return found


def launch_standin(log_dir: Path, name: str, **options: object) -> Standin:
    port = free_port()
    argv = python_module("vllm_standin", "--host", "127.0.0.1", "--port", str(port))
    for key, value in options.items():
        if key == "enable_force_include_usage":
            if value:
                argv.append("--enable-force-include-usage")
            continue
        if key == "enable_request_id_headers":
            if value:
                argv.append("--enable-request-id-headers")
            continue
        argv += [_FLAGS[key], str(value)]
    proc = Proc(f"{name}-{port}", argv, log_dir=log_dir, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc)
    except BaseException:
        proc.stop()
        raise
    return Standin(url=url, proc=proc)


@pytest.fixture(scope="session")
def standin_session(proc_log_dir: Path) -> Iterator[Standin]:
    standin = launch_standin(proc_log_dir, "standin-session", **SESSION_OPTIONS)
    try:
        yield standin
    finally:
        standin.proc.stop()


@pytest.fixture
def standin(standin_session: Standin) -> Standin:
    standin_session.reset()
    return standin_session


@pytest.fixture
def start_standin(proc_log_dir: Path) -> Iterator[Callable[..., Standin]]:
    started: list[Standin] = []

    def start(**options: object) -> Standin:
        standin = launch_standin(proc_log_dir, "standin", **options)
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.proc.stop()
