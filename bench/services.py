"""The services a run shares across its cells: the vLLM stand-ins and the local S3 (moto).

Two stand-ins run for the whole run, each a `python -m vllm_standin` process:
`paced` (the configured time to first token, inter-token delay and answer
length: the streaming scenarios) and `instant` (no delays, same answer length:
the non-streaming scenario, where a proxy's requests/s is the point and the
model's pace would only hide it). Their request journals are off so their memory
stays flat. moto's server is the S3 endpoint unless the operator names one.

Invariants: `Services.stop()` stops everything `start_services` started, in
reverse order, and is safe to call after a partial start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.children import Child, free_port, python_module, wait_http
from bench.target import Upstream

STANDIN_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@dataclass(frozen=True)
class Pace:
    ttft_ms: float
    itl_ms: float
    tokens: int

    def request_s(self) -> float:
        """How long one streamed answer takes at this pace."""
        return (self.ttft_ms + self.itl_ms * max(self.tokens - 1, 0)) / 1000.0


@dataclass
class Services:
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    paced: Upstream | None = None
    instant: Upstream | None = None
    s3_endpoint: str | None = None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _standin(services: Services, name: str, pace: Pace) -> Upstream:
    port = free_port()
    argv = python_module(
        "vllm_standin",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        STANDIN_MODEL,
        "--ttft-ms",
        f"{pace.ttft_ms:g}",
        "--itl-ms",
        f"{pace.itl_ms:g}",
        "--tokens",
        str(pace.tokens),
        "--journal-size",
        "0",
        "--loop",
        "uvloop",
    )
    child = Child(name, argv, log_dir=services.log_dir)
    services.children.append(child)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", child)
    return Upstream(url=url, model=STANDIN_MODEL, pid=child.pid)


def _moto(services: Services) -> str:
    port = free_port()
    child = Child(
        "moto",
        python_module("moto.server", "-H", "127.0.0.1", "-p", str(port)),
        log_dir=services.log_dir,
    )
    services.children.append(child)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/", child)
    return url


def start_services(
    log_dir: Path, pace: Pace, *, need_instant: bool, need_s3: bool, s3_endpoint: str | None
) -> Services:
    services = Services(log_dir)
    try:
        services.paced = _standin(services, "standin-paced", pace)
        if need_instant:
            services.instant = _standin(services, "standin-instant", Pace(0, 0, pace.tokens))
        if need_s3:
            services.s3_endpoint = s3_endpoint or _moto(services)
    except BaseException:
        services.stop()
        raise
    return services
