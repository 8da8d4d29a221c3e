"""Every metric the dashboard, the alarms and the scaling policy read is one something exports.

Exported names come from the real processes (the sidecar in front of the
vLLM stand-in, both scraped after traffic, and the sidecar's EMF line), from
vLLM's names renamed to stable ones (observability/stable-names.json, applied
by the collector and by Prometheus) and, for the GPU, from DCGM exporter's
documented default field list (observability/dcgm-fields.json, with its
source). The rendered stack's collector configuration, the local Prometheus
configuration and the compose profile are checked against the same data.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import yaml

from ecs.stackgen.observability import (
    ENGINE_METRICS,
    GPU_METRICS,
    GPU_NAMESPACE,
    INFERENCE_NAMESPACE,
    collector_config,
    daemon_collector_jobs,
    stable_names,
    task_collector_jobs,
)
from ecs.stackgen.sources import load_sources
from ecs.stackgen.template import render_template
from tests.deploy.tools import ROOT
from tests.faults.observe import scrape
from tests.sidecar_fixture import AUDIT_HEADERS, StartSidecar
from tests.standin_fixture import Standin

DASHBOARD = ROOT / "observability" / "grafana" / "dashboards" / "central-llm.json"
PROMETHEUS = ROOT / "observability" / "prometheus.yml"
DCGM = json.loads((ROOT / "observability" / "dcgm-fields.json").read_text())
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers,
    ranges and grouping clauses that are not function calls."""
    text = re.sub(r"\{[^}]*\}", " ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name in _PROMQL_WORDS:
            continue
        names.add(name)
    return names


def family(sample_name: str) -> str:
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(llm_x_bucket{route="/v1/chat", le!="1"}[5m]))) / ignoring(a) vllm:y_total'
    )
    assert metric_names(expr) == {"llm_x_bucket", "vllm:y_total"}


async def _traffic(url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(f"{url}/v1/chat/completions", json=body, headers=AUDIT_HEADERS) as r:
                assert r.status == 200
                await r.read()


async def _exported(
    standin: Standin, start_sidecar: StartSidecar
) -> tuple[set[str], set[tuple[str, str]]]:
    """(Prometheus sample names, EMF metric names) of the real sidecar and stand-in."""
    sidecar = start_sidecar(standin.url, METRICS_MODELS=MODEL, EMF_INTERVAL_S="0.5")
    await _traffic(sidecar.url)
    renames = stable_names()
    engine = scrape(f"{standin.url}/metrics")
    names = {renames.get(family(n), n) for n, _ in engine.samples}
    names |= {n for n, _ in engine.samples}
    names |= {n for n, _ in scrape(sidecar.metrics_url).samples}
    names |= set(DCGM["fields"])
    emf: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(n == "TimeToFirstToken" for _, n in emf):
        for line in sidecar.log_lines():
            if '"_aws"' in line:
                for block in json.loads(line)["_aws"]["CloudWatchMetrics"]:
                    emf |= {(block["Namespace"], m["Name"]) for m in block["Metrics"]}
        await asyncio.sleep(0.2)
    return names, emf


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def _known(name: str, exported: set[str]) -> bool:
    return name in exported or family(name) in exported


async def test_every_dashboard_query_names_an_exported_metric(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    exported, _ = await _exported(standin_session, start_sidecar)
    used = {name for expr in _dashboard_exprs() for name in metric_names(expr)}
    assert used, "no metric found in the dashboard"
    assert {n for n in used if not _known(n, exported)} == set()
    # The panels the issue asks for are there.
    for wanted in (
        "llm_sidecar_tokens_total",
        "llm_inference_time_to_first_token_seconds_bucket",
        "llm_inference_inter_token_latency_seconds_bucket",
        "llm_engine_requests_waiting",
        "llm_engine_kv_cache_usage_ratio",
        "DCGM_FI_DEV_GPU_UTIL",
        "llm_audit_spool_bytes",
        "llm_audit_oldest_unshipped_age_seconds",
    ):
        assert wanted in used, wanted


def _alarm_metrics(template: dict[str, Any]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            if "MetricName" in props:
                found.add((props["Namespace"], props["MetricName"]))
            for query in props.get("Metrics", []):
                if "MetricStat" in query:
                    metric = query["MetricStat"]["Metric"]
                    found.add((metric["Namespace"], metric["MetricName"]))
        if resource["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy":
            spec = props["TargetTrackingScalingPolicyConfiguration"][
                "CustomizedMetricSpecification"
            ]
            found.add((spec["Namespace"], spec["MetricName"]))
    return found


async def test_every_alarm_and_the_scaling_policy_name_an_exported_metric(
    standin_session: Standin, start_sidecar: StartSidecar
) -> None:
    exported, emf = await _exported(standin_session, start_sidecar)
    used = {
        (ns, name)
        for ns, name in _alarm_metrics(render_template(load_sources(ROOT)))
        if ns in (INFERENCE_NAMESPACE, GPU_NAMESPACE)
    }
    assert {name for _, name in used} >= {
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_FB_USED",
        "TimeToFirstToken",
        "InferenceErrors",
        "llm_engine_requests_waiting",
    }
    for namespace, name in used:
        if (namespace, name) in emf:
            continue  # the sidecar's own EMF line
        # Otherwise a collector's EMF: a scraped metric that its declaration selects.
        selected = ENGINE_METRICS if namespace == INFERENCE_NAMESPACE else GPU_METRICS
        assert name in selected, (namespace, name)
        assert name in exported, (namespace, name)
    assert set(ENGINE_METRICS) <= exported and set(GPU_METRICS) <= exported


def test_collector_configs_rename_vllm_and_declare_what_cloudwatch_gets() -> None:
    renames = stable_names()
    task = yaml.safe_load(
        collector_config(task_collector_jobs(), INFERENCE_NAMESPACE, ENGINE_METRICS, True)
    )
    jobs = {j["job_name"]: j for j in task["receivers"]["prometheus"]["config"]["scrape_configs"]}
    assert jobs["vllm"]["static_configs"] == [{"targets": ["127.0.0.1:8001"]}]
    assert jobs["sidecar"]["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]
    rules = {
        r["regex"]: r["replacement"]
        for r in jobs["vllm"]["metric_relabel_configs"]
        if r.get("target_label") == "__name__"
    }
    assert rules == renames
    assert set(task["service"]["pipelines"]["metrics"]["exporters"]) == {
        "awsemf",
        "prometheus",
        "prometheusremotewrite",
    }
    plain = yaml.safe_load(
        collector_config(task_collector_jobs(), INFERENCE_NAMESPACE, ENGINE_METRICS, False)
    )
    assert (
        "prometheusremotewrite" not in plain["exporters"] and "sigv4auth" not in plain["extensions"]
    )
    gpu = yaml.safe_load(
        collector_config(daemon_collector_jobs(), GPU_NAMESPACE, GPU_METRICS, False)
    )
    assert gpu["receivers"]["prometheus"]["config"]["scrape_configs"][0]["static_configs"] == [
        {"targets": ["127.0.0.1:9400"]}
    ]
    declared = gpu["exporters"]["awsemf"]["metric_declarations"][0]["metric_name_selectors"]
    assert set(declared) <= set(DCGM["fields"])


def test_local_prometheus_renames_like_the_collector() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    rules = {r["regex"]: r["replacement"] for r in jobs["vllm"]["metric_relabel_configs"]}
    assert rules == stable_names()
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["127.0.0.1:8001"]
    assert jobs["sidecar"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]


def test_task_collector_is_not_essential_and_the_gpu_exporter_is_a_daemon() -> None:
    resources = render_template(load_sources(ROOT))["Resources"]
    containers = {
        c["Name"]: c for c in resources["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    }
    assert containers["otel-collector"]["Essential"] is False
    assert "ResourceRequirements" not in containers["otel-collector"]
    assert containers["vllm"]["Essential"] and containers["audit-sidecar"]["Essential"]
    daemon = resources["GpuMetricsDaemon"]["Properties"]
    assert daemon["SchedulingStrategy"] == "DAEMON"
    gpu_task = resources["GpuMetricsTaskDefinition"]["Properties"]
    assert gpu_task["NetworkMode"] == "host"
    dcgm = gpu_task["ContainerDefinitions"][0]
    assert "ResourceRequirements" not in dcgm  # reserving a GPU would take it from vLLM
    assert {"Name": "NVIDIA_VISIBLE_DEVICES", "Value": "all"} in dcgm["Environment"]


def test_scaling_tracks_waiting_requests_per_task() -> None:
    """moto creates no Application Auto Scaling resources from a template: checked here."""
    resources = render_template(load_sources(ROOT))["Resources"]
    target = resources["ServiceScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (
        {"Ref": "ScalingMinTasks"},
        {"Ref": "ScalingMaxTasks"},
    )
    policy = resources["ServiceWaitingRequestsScaling"]["Properties"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == {"Ref": "ScalingWaitingPerTask"}
    metric = config["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == (
        INFERENCE_NAMESPACE,
        "llm_engine_requests_waiting",
        "Average",
    )
