"""The sidecar's default allowlist against vLLM 0.33's route table.

`sidecar_audit/vllm_routes.json` is every route vLLM's API server can register
(all routers, conditional ones included), extracted from the release wheel by
`vllm_engine/extract_routes.py` and classified there. Here: the default allowlist
forwards exactly the `client` routes (and the `pooling` ones only when
configured), every other route of the table is refused in every spelling, and —
with `VLLM_WHEEL` pointing at the wheel — the committed table is the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar_audit.config import Config, ConfigError
from sidecar_audit.routing import (
    CLIENT_PATHS,
    NEVER_FORWARDED,
    NEVER_FORWARDED_CLASSES,
    POOLING_PATHS,
    path_allowed,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "sidecar_audit" / "vllm_routes.json"
EXTRACTOR = ROOT / "vllm_engine" / "extract_routes.py"
ENV = {"AUDIT_BUCKET": "central-llm-audit", "AUDIT_SPOOL_DIR": "/tmp/spool"}


def routes() -> list[dict[str, object]]:
    table = json.loads(TABLE.read_text())
    assert table["vllmVersion"] == "0.33.0"
    return table["routes"]


def concrete(path: str) -> str:
    return path.replace("{response_id}", "resp_123")


def paths_of(cls: str) -> set[str]:
    return {str(r["path"]) for r in routes() if r["class"] == cls}


@pytest.mark.skipif("VLLM_WHEEL" not in os.environ, reason="set VLLM_WHEEL to a vLLM wheel")
def test_the_committed_table_matches_the_wheel() -> None:
    result = subprocess.run(
        [sys.executable, str(EXTRACTOR), os.environ["VLLM_WHEEL"], "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_table_holds_the_routes_the_issue_names() -> None:
    by_path = {str(r["path"]): r for r in routes()}
    assert by_path["/v1/load_lora_adapter"]["class"] == "lora"
    assert by_path["/v1/messages"]["class"] == "client"
    assert by_path["/scale_elastic_ep"]["class"] == "elastic-ep"
    assert by_path["/sleep"]["class"] == "sleep-wake"
    assert by_path["/start_profile"]["class"] == "profiling"
    assert len(routes()) > 80


def test_client_and_pooling_paths_are_the_tables_classes() -> None:
    assert set(CLIENT_PATHS) == paths_of("client")
    assert set(POOLING_PATHS) == paths_of("pooling")


def test_default_allowlist_forwards_exactly_the_client_routes() -> None:
    allowed = Config.from_env(ENV).allowed_paths
    for route in routes():
        path = concrete(str(route["path"]))
        assert path_allowed(path, allowed) == (route["class"] == "client"), route
        for method in route["methods"]:  # type: ignore[attr-defined]
            wire = {"*": None, "WEBSOCKET": "GET"}.get(method, method)
            assert path_allowed(path, allowed, wire) == (route["class"] == "client"), route


def test_pooling_routes_only_when_configured() -> None:
    allowed = Config.from_env({**ENV, "FORWARD_POOLING_ROUTES": "true"}).allowed_paths
    for route in routes():
        path = concrete(str(route["path"]))
        assert path_allowed(path, allowed) == (route["class"] in ("client", "pooling")), route


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/v1/load_lora_adapter?x=1",
        "/v1/%6coad_lora_adapter",
        "/v1/chat/../load_lora_adapter",
        "/v1/chat/completions/render",
        "/v1/responses/render",
        "/v1/responses//cancel",
        "/v1/responses/a/b/cancel",
        "/v1/models/",
        "/inference/v1/generate",
        "/metrics",
        "/metrics/x",
        "/invocations",
        "/sleep",
        "/v1/realtime",
        "/docs",
    ],
)
def test_never_forwarded(raw: str) -> None:
    assert not path_allowed(raw, Config.from_env(ENV).allowed_paths)


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/responses/resp_1",
        "/v1/responses/resp_1/cancel",
        "/v1/chat%2Fcompletions",
        "/v1/messages",
    ],
)
def test_forwarded(raw: str) -> None:
    assert path_allowed(raw, Config.from_env(ENV).allowed_paths)


def test_never_forwarded_is_the_admin_classes_of_the_table() -> None:
    admin = {str(r["path"]) for r in routes() if r["class"] in NEVER_FORWARDED_CLASSES}
    assert admin | {"/inference/v1/abort_requests"} == NEVER_FORWARDED
    classes = {str(r["class"]) for r in routes()}
    assert set(NEVER_FORWARDED_CLASSES) <= classes


@pytest.mark.parametrize("patterns", ["/*", "/v1/*,/*", "/{a},/v1/{a},/{a}/{b}"])
def test_admin_routes_are_refused_under_any_pattern(patterns: str) -> None:
    allowed = Config.from_env({**ENV, "ALLOWED_PATHS": patterns}).allowed_paths
    assert path_allowed("/v1/models", allowed) or path_allowed("/sleep/x", allowed)
    for path in NEVER_FORWARDED:
        for spelling in (
            path,
            path + "?x=1",
            path + "#x",
            path + "#/../v1/models",
            path + "?#",
            path.replace("_", "%5F"),
            "/x/.." + path,
        ):
            assert not path_allowed(spelling, allowed), spelling


@pytest.mark.parametrize("patterns", ["/*", "/v1/*,/*"])
def test_admin_routes_are_refused_in_the_spellings_starlette_routes_to_them(
    patterns: str,
) -> None:
    """Starlette (1.10) matches a route's regex `^/sleep$` with `re.match`, and `$` also
    matches before a trailing newline: uvicorn decodes `/sleep%0A` to `/sleep\\n`, which
    reaches `/sleep` (httptools and h11 alike). FastAPI strips vLLM's `--root-path R`
    before routing, so `R/sleep` reaches `/sleep` too, whatever R is."""
    allowed = Config.from_env({**ENV, "ALLOWED_PATHS": patterns}).allowed_paths
    for path in NEVER_FORWARDED:
        for spelling in (
            path + "%0A",
            path + "%0a?x=1",
            "/llm" + path,
            "/a/b" + path + "%0A",
            "/v1" + path,
        ):
            assert not path_allowed(spelling, allowed), spelling
    assert not path_allowed("/adapters", allowed)  # SageMaker bootstrap: POST loads LoRA
    assert not path_allowed("/adapters/x", allowed)  # DELETE unloads it
    assert not path_allowed("/llm/adapters/x", allowed)


def test_a_control_character_in_a_path_is_never_forwarded() -> None:
    allowed = Config.from_env({**ENV, "ALLOWED_PATHS": "/*"}).allowed_paths
    for char in [*range(0x20), 0x7F]:
        assert not path_allowed(f"/v1/models%{char:02X}", allowed), char


def test_a_get_of_the_response_named_render_is_forwarded() -> None:
    """`POST /v1/responses/render` is scale-out's render route, but Starlette takes the first
    route that matches path and method: `GET /v1/responses/render` is the client route
    `GET /v1/responses/{response_id}` (checked on the real stack)."""
    allowed = Config.from_env(ENV).allowed_paths
    assert path_allowed("/v1/responses/render", allowed, method="GET")
    assert not path_allowed("/v1/responses/render", allowed, method="POST")
    assert not path_allowed("/v1/responses/render", allowed)  # method unknown: refused


@pytest.mark.parametrize("path", sorted(NEVER_FORWARDED))
def test_listing_an_admin_route_is_a_start_up_error(path: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_PATHS") as error:
        Config.from_env({**ENV, "ALLOWED_PATHS": f"/v1/models,{path}"})
    assert "never forwarded" in str(error.value)


def test_no_path_is_forwarded_for_a_connect() -> None:
    """uvicorn reads a CONNECT's target as an authority (`CONNECT /v1/models`: the empty path)."""
    allowed = Config.from_env(ENV).allowed_paths
    for path in CLIENT_PATHS:
        assert path_allowed(concrete(path), allowed, "GET" if "{" in path else None)
        assert not path_allowed(concrete(path), (*allowed, "/*"), "CONNECT"), path
