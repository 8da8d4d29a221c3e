"""nginx as a plain reverse proxy, the floor for any proxy: no audit, no buffering, keep-alive.

Runs unprivileged-style on a loopback port with every file (config, pid, logs,
temp paths) in the cell's own directory; one worker process, like the sidecar's
one event loop. Upstream keep-alive idles out after 4 s, below vLLM's own 5 s
(`VLLM_HTTP_TIMEOUT_KEEP_ALIVE`), so nginx never reuses a connection vLLM is
closing. The system's processes are the master and its worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.children import Child, free_port, wait_ready
from bench.target import ChildRunning, LaunchContext, Target

_CONFIG = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream vllm {{
        server {upstream};
        keepalive 1024;
        keepalive_timeout 4s;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def find_nginx(explicit: str | None) -> str | None:
    """The nginx binary: `explicit`, else `nginx` on PATH or in /usr/sbin."""
    if explicit:
        return explicit
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render_config(directory: Path, port: int, upstream_hostport: str) -> str:
    return _CONFIG.format(dir=directory, port=port, upstream=upstream_hostport)


def start_nginx(ctx: LaunchContext, binary: str) -> ChildRunning:
    directory = ctx.workdir / f"nginx-{ctx.cell_id}"
    directory.mkdir(parents=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(mode=0o777)
        (directory / sub).chmod(0o777)  # a root master hands its worker to `nobody`
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(render_config(directory, port, ctx.upstream.url.removeprefix("http://")))
    child = Child(
        f"nginx-{ctx.cell_id}",
        [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
        log_dir=ctx.log_dir,
    )
    wait_ready(child, f"http://127.0.0.1:{port}/v1/models", timeout=30)
    target = Target("nginx", "127.0.0.1", port, ctx.upstream.model, pids=(child.pid,))
    return ChildRunning(target, child)
