"""`central-llm-local-stack`: the whole audit pipeline on one machine, no Docker, one command.

Starts, as child processes on 127.0.0.1, in this order, each one only once the
previous one is ready:

1. moto's server (`python -m moto.server`): local S3, DynamoDB and SQS; then,
   in this process, the bucket, table, queue + DLQ and the S3 -> SQS
   notification (`central_llm_ops.local_aws.ensure_audit_resources`);
2. the vLLM stand-in (`python -m vllm_standin`), unless `--upstream URL` names
   a real vLLM (or any vLLM-compatible server);
3. the audit sidecar (`python -m sidecar_audit`), ready when its `/health` is 200;
4. the ingestion runner (`python -m central_llm_ops.ingest_runner`), ready when
   it logged `runner_started`.

Then it prints a summary (URLs, a curl, the query command, the logs, how to
stop), writes the same facts as JSON (`--json-summary`, default
`<state dir>/stack.json`) and waits.

Invariants:

- Never touches real AWS. The children get an environment without any of the
  caller's `AWS_*` variables, with fake credentials, `AWS_ENDPOINT_URL` set to
  the local moto server and the shared config/credentials files pointed at
  /dev/null; `check_child_environment` refuses to start anything otherwise.
  This process's own AWS clients get the endpoint and the keys explicitly.
- Children run in their own sessions (Ctrl-C reaches only this process) and
  get SIGTERM if this process dies (Linux). SIGTERM, SIGINT or SIGHUP stops them in
  the order sidecar (it drains its spool to S3 first), ingestion runner,
  stand-in, moto; each gets SIGKILL only when it outlives its stop timeout.
  Exit status 0 when every child stopped cleanly.
- When a child dies or is not ready in time, the others are stopped and the
  command exits 1 naming the child, its exit status and the tail of its log.
  Bad options (a port in use, a bad URL) exit 2 before anything starts.
- Each child writes one log file, `<state dir>/logs/<name>.log` (overwritten
  per run); the spool is `<state dir>/spool`, so a later run on the same
  state directory ships what an earlier one left. This command's own log
  lines are JSON on stderr; the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from central_llm_ops.children import Child, python_module
from central_llm_ops.local_aws import (
    DEFAULT_DLQ,
    DEFAULT_QUEUE,
    AuditResources,
    AwsClients,
    ensure_audit_resources,
)
from llm_audit.log import JsonLog
from vllm_standin.options import DEFAULT_MODEL

BUCKET = "central-llm-audit"
PREFIX = "logs"
TABLE = "CentralLLMAudit"
REGION = "eu-central-1"
FAKE_KEY = "local"  # the fake access key id and secret, as in compose.yaml
DEMO_SOURCE = "local-demo"
DEMO_USER = "alice"
POLL_S = 0.1
STOP_TIMEOUT_S = 15.0
PORT_FLAGS = (
    ("sidecar", "the sidecar's API port"),
    ("upstream", "the stand-in's port"),
    ("moto", "moto's port"),
    ("metrics", "the sidecar's metrics port"),
)
# Sidecar settings the stack defaults (the caller's environment may override them).
SIDECAR_DEFAULTS = (
    ("AUDIT_FLUSH_INTERVAL_S", "1"),
    ("EMF_INTERVAL_S", "0"),
    ("SHUTDOWN_GRACE_S", "10"),
    ("SHUTDOWN_SHIP_S", "10"),
)


class UsageError(Exception):
    """A bad option or environment: nothing was started (exit 2)."""


class ChildFailed(Exception):
    """A child died, or was not ready in time (exit 1)."""


class StopRequested(Exception):
    """A stop signal arrived while the stack was starting."""


@dataclass(frozen=True)
class Ports:
    sidecar: int = 8000
    upstream: int = 8001  # the stand-in's; unused with --upstream
    moto: int = 5000
    metrics: int = 9464


@dataclass(frozen=True)
class StackOptions:
    state_dir: Path
    ports: Ports
    upstream_url: str | None  # None: start the stand-in
    model: str
    ready_timeout_s: float
    json_summary: Path


# --- the children's environment ------------------------------------------------


def child_environment(base: Mapping[str, str], endpoint: str) -> dict[str, str]:
    """`base` without any AWS_* variable, plus fake keys and the local endpoint only."""
    env = {k: v for k, v in base.items() if not k.upper().startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID=FAKE_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_KEY,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    for name in ("NO_PROXY", "no_proxy"):  # loopback never through an HTTP proxy
        env[name] = ",".join(filter(None, [env.get(name), "127.0.0.1", "localhost"]))
    return env


def check_child_environment(env: Mapping[str, str]) -> None:
    """Refuse an environment in which an AWS SDK could reach anything but local moto."""
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    if not endpoint.startswith("http://127.0.0.1:"):
        raise UsageError(f"refusing to start: AWS_ENDPOINT_URL would be {endpoint or 'unset'}")
    leaks = sorted(
        k
        for k in env
        if k.startswith("AWS_ENDPOINT_URL_")
        or k in ("AWS_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    )
    if leaks or env.get("AWS_ACCESS_KEY_ID") != FAKE_KEY:
        raise UsageError(f"refusing to start: the children would see {leaks or 'real keys'}")


# --- readiness ----------------------------------------------------------------


def http_get(url: str) -> tuple[int | None, str]:
    """Status and (the start of the) body `url` answers with; (None, why) when nothing answers.

    Proxies from the environment are bypassed: everything here is on loopback.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as answer:
            return int(answer.status), answer.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace")
    except OSError as exc:
        return None, str(exc)


def logged_event(path: Path, event: str) -> bool:
    """True once the JSON log at `path` has a line whose `event` is `event`."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        with contextlib.suppress(ValueError):
            if json.loads(line).get("event") == event:
                return True
    return False


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_ports() -> Ports:
    """Four distinct ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        picked = []
        for _ in fields(Ports):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            picked.append(s.getsockname()[1])
    return Ports(*picked)


# --- the stack ----------------------------------------------------------------


class Stack:
    """Starts the children in order, supervises them, stops them sidecar first."""

    def __init__(self, options: StackOptions, log: JsonLog) -> None:
        self.options = options
        self.log = log
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.resources: AuditResources | None = None
        self.moto_url = f"http://127.0.0.1:{options.ports.moto}"
        self.env = child_environment(os.environ, self.moto_url)
        check_child_environment(self.env)
        self.sidecar_url = f"http://127.0.0.1:{options.ports.sidecar}"
        self.upstream_url = options.upstream_url or f"http://127.0.0.1:{options.ports.upstream}"
        self.logs_dir = options.state_dir / "logs"
        self.spool_dir = options.state_dir / "spool"

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self.stopping:
            self.log.info("stop_requested", signal=signum)
        self.stopping = True

    # starting

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        moto = self._spawn("moto", ["moto.server", "-H", "127.0.0.1", "-p", str(self.ports.moto)])
        self._wait(moto, lambda: http_get(f"{self.moto_url}/moto-api/")[0] is not None)
        self.resources = self._create_resources()
        if self.options.upstream_url is None:
            standin = self._spawn("standin", self._standin_args())
            self._wait(standin, lambda: http_get(f"{self.upstream_url}/health")[0] == 200)
        sidecar = self._spawn("sidecar", ["sidecar_audit"], self._sidecar_env())
        health = f"{self.sidecar_url}/health"

        def health_answer() -> str:
            return "/health: {} {}".format(*http_get(health))

        self._wait(sidecar, lambda: http_get(health)[0] == 200, health_answer)
        runner = self._spawn("ingest-runner", self._runner_args(), {"TABLE_NAME": TABLE})
        self._wait(runner, lambda: logged_event(runner.log_path, "runner_started"))

    @property
    def ports(self) -> Ports:
        return self.options.ports

    def _spawn(
        self, name: str, module_args: list[str], extra: dict[str, str] | None = None
    ) -> Child:
        env = {**self.env, **(extra or {})}
        check_child_environment(env)
        child = Child(
            name,
            python_module(*module_args),
            log_dir=self.logs_dir,
            env=env,
            inherit_env=False,
            die_with_parent=True,
        )
        self.children[name] = child
        self.log.info("child_started", child=name, pid=child.pid, log=str(child.log_path))
        return child

    def _wait(
        self, child: Child, ready: Callable[[], bool], state: Callable[[], str] | None = None
    ) -> None:
        """Until `ready()`; ChildFailed when the child exits or the timeout passes first."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        while not ready():
            if self.stopping:
                raise StopRequested
            code = child.exit_code()
            if code is not None:
                raise ChildFailed(self._failure(child, f"exited with status {code} during startup"))
            if time.monotonic() > deadline:
                why = f" ({state()})" if state else ""
                timeout = self.options.ready_timeout_s
                raise ChildFailed(self._failure(child, f"was not ready within {timeout:g} s{why}"))
            time.sleep(POLL_S)
        self.log.info("child_ready", child=child.name, pid=child.pid)

    def _create_resources(self) -> AuditResources:
        session = boto3.session.Session(
            aws_access_key_id=FAKE_KEY, aws_secret_access_key=FAKE_KEY, region_name=REGION
        )
        clients = AwsClients(
            *(session.client(s, endpoint_url=self.moto_url) for s in ("s3", "dynamodb", "sqs"))
        )
        try:
            return ensure_audit_resources(
                clients, BUCKET, TABLE, DEFAULT_QUEUE, DEFAULT_DLQ, PREFIX
            )
        except (BotoCoreError, ClientError) as exc:
            moto = self.children["moto"]
            raise ChildFailed(self._failure(moto, f"refused the audit resources: {exc}")) from exc

    def _standin_args(self) -> list[str]:
        port = str(self.ports.upstream)
        return [
            "vllm_standin",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--model",
            self.options.model,
        ]

    def _sidecar_env(self) -> dict[str, str]:
        defaults = {k: os.environ.get(k, v) for k, v in SIDECAR_DEFAULTS}
        return {
            **defaults,
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(self.ports.sidecar),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.ports.metrics),
            "UPSTREAM_URL": self.upstream_url,
            "AUDIT_BUCKET": BUCKET,
            "AUDIT_PREFIX": PREFIX,
            "AUDIT_SPOOL_DIR": str(self.spool_dir),
        }

    def _runner_args(self) -> list[str]:
        assert self.resources is not None
        queue = self.resources.queue_url
        return ["central_llm_ops.ingest_runner", "--queue", queue, "--wait-seconds", "2"]

    def _failure(self, child: Child, what: str) -> str:
        tail = "\n".join(f"  | {line}" for line in child.tail())
        return f"{child.name} {what} (log: {child.log_path}); its last lines:\n{tail}"

    # running and stopping

    def supervise(self) -> None:
        """Return on a stop signal; raise ChildFailed when a child exits on its own."""
        while not self.stopping:
            for child in self.children.values():
                code = child.exit_code()
                if code is not None:
                    raise ChildFailed(self._failure(child, f"exited with status {code}"))
            time.sleep(POLL_S * 2)

    def stop(self) -> bool:
        """Stop every child, sidecar first; True when all of them stopped cleanly."""
        order = ["sidecar", "ingest-runner", "standin", "moto"]
        clean = True
        for name in (n for n in order if n in self.children):
            child = self.children[name]
            code = child.stop(self._stop_timeout(name))
            clean = clean and child.stopped_cleanly()
            self.log.info(
                "child_stopped", child=name, pid=child.pid, exitCode=code, killed=child.killed
            )
        return clean

    def _stop_timeout(self, name: str) -> float:
        if name != "sidecar":
            return STOP_TIMEOUT_S
        env = {**self.env, **self._sidecar_env()}
        try:
            drain = float(env["SHUTDOWN_GRACE_S"]) + float(env["SHUTDOWN_SHIP_S"])
        except ValueError:
            drain = 0.0  # the sidecar refused the value at start anyway
        return drain + STOP_TIMEOUT_S


# --- the summary --------------------------------------------------------------


def served_model(upstream_url: str, fallback: str) -> str:
    """The first model the upstream serves (for the example curl), else `fallback`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{upstream_url}/v1/models", timeout=2.0) as answer:
            return str(json.load(answer)["data"][0]["id"])
    except (OSError, ValueError, LookupError, TypeError):
        return fallback


def summary_data(stack: Stack, model: str) -> dict[str, Any]:
    """The facts a script needs (ports, URLs, pids, logs, names), JSON-ready."""
    assert stack.resources is not None
    ports = stack.ports
    return {
        "pid": os.getpid(),
        "stateDir": str(stack.options.state_dir),
        "spoolDir": str(stack.spool_dir),
        "ports": {"sidecar": ports.sidecar, "metrics": ports.metrics, "moto": ports.moto}
        | ({} if stack.options.upstream_url else {"standin": ports.upstream}),
        "urls": {
            "sidecar": stack.sidecar_url,
            "openaiBaseUrl": f"{stack.sidecar_url}/v1",
            "metrics": f"http://127.0.0.1:{ports.metrics}/metrics",
            # vLLM (or the stand-in) serves its engine metrics on its own port.
            "engineMetrics": f"{stack.upstream_url}/metrics",
            "upstream": stack.upstream_url,
            "aws": stack.moto_url,
        },
        "model": model,
        "standin": stack.options.upstream_url is None,
        "children": {
            name: {"pid": c.pid, "log": str(c.log_path)} for name, c in stack.children.items()
        },
        "aws": {
            "endpoint": stack.moto_url,
            "region": REGION,
            "bucket": stack.resources.bucket,
            "prefix": stack.resources.prefix,
            "table": stack.resources.table,
            "queueUrl": stack.resources.queue_url,
            "dlqUrl": stack.resources.dlq_url,
        },
        "queryEnv": {
            "AWS_ENDPOINT_URL": stack.moto_url,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": FAKE_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_KEY,
        },
    }


def render_summary(data: Mapping[str, Any]) -> str:
    """The human-readable summary printed once the stack is ready."""
    urls, children, aws = data["urls"], data["children"], data["aws"]
    upstream = "vLLM stand-in" if data["standin"] else "upstream vLLM"
    env = " ".join(f"{k}={v}" for k, v in data["queryEnv"].items())
    body = json.dumps(
        {"model": data["model"], "messages": [{"role": "user", "content": "Say hello"}]}
    )

    def row(label: str, where: str, name: str | None = None) -> str:
        child = children.get(name or "", None)
        extra = f"  pid {child['pid']:<7}  log {child['log']}" if child else ""
        return f"  {label:<18} {where:<44}{extra}".rstrip()

    lines = [
        f"Central LLM local stack is ready (state: {data['stateDir']})",
        "",
        row("API (sidecar)", urls["openaiBaseUrl"], "sidecar"),
        row("sidecar metrics", urls["metrics"]),
        row(upstream, urls["upstream"], "standin"),
        row("engine metrics", urls["engineMetrics"]),
        row("local AWS (moto)", urls["aws"], "moto"),
        row("ingestion runner", f"SQS {DEFAULT_QUEUE} -> {aws['table']}", "ingest-runner"),
        row("audit objects", f"s3://{aws['bucket']}/{aws['prefix']}/YYYY/MM/DD/"),
        row("spool", data["spoolDir"]),
        "",
        "Send a request (the x-llm-* headers are required):",
        f"  curl -si {urls['openaiBaseUrl']}/chat/completions \\",
        "    -H 'content-type: application/json' \\",
        f"    -H 'x-llm-source: {DEMO_SOURCE}' -H 'x-llm-user: {DEMO_USER}' "
        "-H 'x-llm-request-type: chat' \\",
        f"    -d {shlex.quote(body)}",
        "",
        "Find its audit item a few seconds later (x-request-id is in the response headers):",
        f"  {env} \\",
        f"    central-llm-audit-query user {DEMO_USER} --since 1h",
        f"  {env} \\",
        f"    central-llm-audit-query request <x-request-id> --project {DEMO_SOURCE}",
        "",
        f"Stop: Ctrl-C, or kill -TERM {data['pid']} (the sidecar drains its spool first).",
    ]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


# --- command line -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="central-llm-local-stack",
        description="Run the audit pipeline locally without Docker: moto (S3, DynamoDB, SQS), "
        "a vLLM stand-in (or --upstream), the audit sidecar and the ingestion runner. "
        "Ctrl-C or SIGTERM stops everything, the sidecar first.",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="logs, spool, stack.json (default: new temp dir)"
    )
    parser.add_argument("--upstream", metavar="URL", help="a running vLLM (no stand-in is started)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the stand-in's model name")
    parser.add_argument("--free-ports", action="store_true", help="pick free ports for all")
    defaults = Ports()
    for name, what in PORT_FLAGS:
        parser.add_argument(
            f"--{name}-port", type=int, help=f"{what} (default {getattr(defaults, name)})"
        )
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds per child")
    parser.add_argument(
        "--json-summary", type=Path, metavar="FILE", help="default: STATE_DIR/stack.json"
    )
    return parser


def options_from(args: argparse.Namespace) -> StackOptions:
    """Validated options; raises UsageError."""
    ports = free_ports() if args.free_ports else Ports()
    chosen = {n: getattr(args, f"{n}_port") for n, _ in PORT_FLAGS}
    ports = replace(ports, **{n: p for n, p in chosen.items() if p is not None})
    needed = {"sidecar": ports.sidecar, "moto": ports.moto, "metrics": ports.metrics}
    if not args.upstream:
        needed["upstream"] = ports.upstream
    if len(set(needed.values())) != len(needed):
        raise UsageError(f"ports must differ: {needed}")
    for name, port in needed.items():
        if port_in_use(port):
            raise UsageError(f"port {port} ({name}) is in use: pass --{name}-port or --free-ports")
    upstream = args.upstream.rstrip("/") if args.upstream else None
    if upstream and not upstream.startswith(("http://", "https://")):
        raise UsageError(f"--upstream must be an http(s) URL, not {args.upstream!r}")
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="central-llm-local-"))
    state_dir = state_dir.resolve()
    return StackOptions(
        state_dir=state_dir,
        ports=ports,
        upstream_url=upstream,
        model=args.model,
        ready_timeout_s=args.ready_timeout,
        json_summary=(args.json_summary or state_dir / "stack.json").resolve(),
    )


def run(options: StackOptions, out: TextIO, err: TextIO) -> int:
    """Start, report, wait for a stop signal, stop; the exit status."""
    log = JsonLog(err, logger="central-llm-local-stack")
    options.json_summary.unlink(missing_ok=True)
    stack = Stack(options, log)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stack.request_stop)
    status = 0
    try:
        stack.start()
        data = summary_data(stack, served_model(stack.upstream_url, options.model))
        write_json(options.json_summary, data)
        out.write(render_summary(data))
        out.flush()
        stack.supervise()
    except StopRequested:
        pass
    except ChildFailed as exc:
        err.write(f"central-llm-local-stack: {exc}\nstopping the other processes\n")
        status = 1
    finally:
        clean = stack.stop()
    if status == 0 and not clean:
        err.write("central-llm-local-stack: a process did not stop cleanly (see the logs)\n")
        status = 1
    log.info("stack_stopped", exitCode=status)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
        return run(options, sys.stdout, sys.stderr)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
