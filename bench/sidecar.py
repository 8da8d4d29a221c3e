"""The audit sidecar under test: `python -m sidecar_audit`, auditing on, S3 on a local endpoint.

Each cell gets a fresh process, a fresh spool directory and its own bucket
(`central-llm-audit-<cell>`; the key layout under `logs/` is the production one),
so the audit check of one cell never sees another's records. Settings are the
production defaults (batching, flush interval, fsync interval, logging) except
where the benchmark must differ: loopback addresses and ports, the spool path,
the local S3 endpoint with throw-away credentials, and whatever the operator
passes (`AUDIT_SPOOL_FSYNC_INTERVAL_MS` per variant, `--sidecar-env`).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from bench.audit_s3 import LOCAL_AWS_ENV, REGION, AuditReader, create_bucket, wait_for_audit
from bench.children import Child, free_port, python_module, wait_ready
from bench.target import AuditCheck, LaunchContext, Target

PREFIX = "logs"
DEFAULT_FLUSH_INTERVAL_S = 5.0


# The sidecar's own view of its cost before vLLM sees the request (Prometheus histogram).
_OVERHEAD = "llm_sidecar_overhead_seconds"


def overhead_from_metrics(text: str) -> dict[str, float] | None:
    """Count and mean of the sidecar's pre-upstream overhead, from a /metrics scrape."""
    total = count = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(f"{_OVERHEAD}_sum"):
            total += float(value)
        elif name.startswith(f"{_OVERHEAD}_count"):
            count += float(value)
    if not count:
        return None
    return {"requests": count, "mean_ms": 1000.0 * total / count}


@dataclass
class SidecarRunning:
    target: Target
    child: Child
    reader: AuditReader
    audit_timeout_s: float
    metrics_url: str

    def audit(self, responded_ids: list[str]) -> AuditCheck | None:
        return wait_for_audit(self.reader, responded_ids, self.audit_timeout_s)

    def self_report(self) -> dict[str, object] | None:
        """What the sidecar says about itself (its overhead histogram), for the JSON."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            return {"error": str(exc)}
        return {"overhead": overhead_from_metrics(text)}

    def stop(self) -> None:
        self.child.stop(grace_s=60)


def start_sidecar(
    ctx: LaunchContext,
    name: str,
    fsync_ms: float | None,
    extra_env: Mapping[str, str],
    audit_timeout_s: float | None = None,
) -> SidecarRunning:
    if ctx.s3_endpoint is None:
        raise RuntimeError("the sidecar needs a local S3 endpoint")
    bucket = f"central-llm-audit-{ctx.cell_id}".lower()
    create_bucket(ctx.s3_endpoint, bucket, REGION)  # --sidecar-env may still point elsewhere
    port = free_port()
    metrics_port = free_port(avoid={port})
    env = {
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": ctx.s3_endpoint,
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        "UPSTREAM_URL": ctx.upstream.url,
        "AUDIT_BUCKET": bucket,
        "AUDIT_PREFIX": PREFIX,
        "AUDIT_SPOOL_DIR": str(ctx.workdir / f"spool-{ctx.cell_id}"),
        **({} if fsync_ms is None else {"AUDIT_SPOOL_FSYNC_INTERVAL_MS": f"{fsync_ms:g}"}),
        **extra_env,
    }
    child = Child(
        f"{name}-{ctx.cell_id}", python_module("sidecar_audit"), log_dir=ctx.log_dir, env=env
    )
    wait_ready(child, f"http://127.0.0.1:{port}/health", timeout=60)
    flush = float(env.get("AUDIT_FLUSH_INTERVAL_S", DEFAULT_FLUSH_INTERVAL_S))
    target = Target(name, "127.0.0.1", port, ctx.upstream.model, pids=(child.pid,))
    reader = AuditReader(ctx.s3_endpoint, bucket, env["AUDIT_PREFIX"], REGION)
    timeout = flush + 60.0 if audit_timeout_s is None else audit_timeout_s
    metrics_url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
    return SidecarRunning(target, child, reader, timeout, metrics_url)
