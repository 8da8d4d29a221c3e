"""The benchmark harness end to end at a tiny load: stand-ins, bare proxy, sidecar, moto, nginx.

Keeps `scripts/benchmark` working in CI: it must drive load through each
system, measure it, find every sidecar record in S3, and call a run invalid
when records are missing. LiteLLM is never started here (slow to start; it
lives in its own venv); nginx only when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.nginx import find_nginx

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--scenarios", "stream-4,nonstream-2",
    "--duration", "1",
    "--warmup", "0.5",
    "--repeats", "1",
    "--generators", "1",
    "--ttft-ms", "5",
    "--itl-ms", "5",
    "--tokens", "4",
    "--rss-every", "0.2",
    "--sidecar-env", "AUDIT_FLUSH_INTERVAL_S=0.2",
]  # fmt: skip


def run_bench(tmp_path: Path, moto_server: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "results.json"
    code = main([*TINY, "--s3-endpoint", moto_server, "--output", str(out), *extra])
    return code, json.loads(out.read_text())


def test_tiny_run_measures_every_system_and_finds_every_record(
    tmp_path: Path, moto_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    systems = ["direct", "aiohttp-bare", "sidecar"] + (["nginx"] if find_nginx(None) else [])
    code, results = run_bench(tmp_path, moto_server, "--systems", ",".join(systems))

    assert code == 0, [c["problems"] for c in results["cells"]]
    cells = {(c["system"], c["scenario"]): c for c in results["cells"]}
    assert set(cells) == {(s, sc) for s in systems for sc in ("stream-4", "nonstream-2")}
    for (system, scenario), c in cells.items():
        m = c["metrics"]
        assert c["valid"] and m["completed"] > 0 and m["error_count"] == 0, (system, scenario)
        assert m["loadgen_cpu_s"] >= 0.0
        if scenario.startswith("stream"):
            # 7 events a request (role, 4 tokens, finish, [DONE]); the window cuts at most
            # one request per client short at each end.
            assert abs(m["events"] - 7 * m["completed"]) <= 7 * 4, (system, m)
            assert m["ttft_p50_ms"] is not None
        else:
            assert m["events"] == 0 and m["ttft_p50_ms"] is None
        if system == "direct":
            assert m["cpu_s"] is None
        else:
            assert m["cpu_s"] is not None and m["rss_peak_mb"] > 1.0
    for scenario in ("stream-4", "nonstream-2"):
        audit = cells[("sidecar", scenario)]["audit"]
        assert audit["complete"] and audit["found"] == audit["expected"] > 0
        assert audit["duplicates"] == 0 and audit["outcomes"] == {"completed": audit["found"]}
        overhead = cells[("sidecar", scenario)]["self_report"]["overhead"]
        assert overhead["requests"] >= audit["found"] and overhead["mean_ms"] > 0
    rows = {(r["system"], r["scenario"]) for r in results["summary"]}
    assert rows == set(cells)
    printed = capsys.readouterr().out
    assert "sidecar" in printed and "Targets:" in printed


def test_missing_audit_records_make_the_run_invalid(tmp_path: Path, moto_server: str) -> None:
    # The sidecar ships to a bucket that does not exist: its records stay in the spool.
    code, results = run_bench(
        tmp_path, moto_server,
        "--systems", "sidecar",
        "--scenarios", "nonstream-2",
        "--sidecar-env", "AUDIT_BUCKET=no-such-bucket-for-bench",
        "--sidecar-env", "SHUTDOWN_SHIP_S=0",
        "--audit-timeout", "1",
    )  # fmt: skip
    assert code == 1
    (cell,) = results["cells"]
    assert cell["valid"] is False
    assert "audit records missing in S3" in cell["problems"]
    assert cell["audit"]["found"] == 0 < cell["audit"]["expected"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_wrapper_script_shows_its_help() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "benchmark"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert "--systems" in done.stdout and "--soak" in done.stdout
