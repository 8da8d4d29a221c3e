"""List every HTTP route vLLM's API server can register, read statically from a vLLM wheel.

Job: turn a vLLM wheel into `sidecar_audit/vllm_routes.json`, the route table the
sidecar's default allowlist is derived from (and checked against by
`tests/sidecar/test_vllm_routes.py`). Nothing is imported or executed: every
`vllm/entrypoints/**/*.py` source in the wheel is parsed with `ast` and these
registration forms are collected, wherever they appear (module level, inside an
`attach_router`, inside an `if`):

- `<router or app>.get/post/put/delete/patch/websocket/api_route("/path", ...)`
  (decorators included), `add_api_route("/path", ..., methods=[...])`,
  `add_websocket_route("/path", ...)`;
- `Mount("/path", ...)` and `app.mount("/path", ...)` (a prefix: everything under it);
- FastAPI's own documentation routes, present unless the `FastAPI(...)` call in
  `launchers/app.py` turns them off;
- the routes the SageMaker bootstrap (`sagemaker_standards.bootstrap(app)` in
  `launchers/app.py`, from model-hosting-container-standards) mounts for each handler
  registered with one of its `register_*_handler` decorators (`SAGEMAKER_HANDLERS`):
  vLLM's LoRA handlers become `POST /adapters` and `DELETE /adapters/{adapter_name}`.

Each route gets its registration site (module, line) and, from the tables below,
the condition under which vLLM registers it (read from the routers' code: the
`register_*`/`attach_router` functions and `launchers/api_server/routers.py`) and the
sidecar's classification: `client` routes (the OpenAI-, Anthropic- and
tokenizer-facing API of a generation model) are forwarded by default, `pooling`
routes only when `FORWARD_POOLING_ROUTES` is on, every other class never.

Invariant: a registration whose path is not a string literal, or a route or module
the tables do not classify, raises `UnsupportedSource` naming the file and line, so
a vLLM release that adds a route fails loudly until someone decides what it is.

Usage: `python vllm_engine/extract_routes.py WHEEL [--output FILE] [--check]`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "sidecar_audit" / "vllm_routes.json"

_METHOD_ATTRS = {
    "get": "GET",
    "post": "POST",
    "put": "PUT",
    "delete": "DELETE",
    "patch": "PATCH",
    "head": "HEAD",
    "options": "OPTIONS",
    "websocket": "WEBSOCKET",
}

# model-hosting-container-standards (vLLM 0.33 requires >=0.1.14,<1.0; read from 0.1.16):
# decorator -> the route its SageMaker router mounts for the handler it registers
# (sagemaker/sagemaker_router.py `get_sagemaker_route_config`, sagemaker/lora/routes.py).
SAGEMAKER_HANDLERS = {
    "register_ping_handler": ("/ping", ["GET"]),
    "register_invocation_handler": ("/invocations", ["POST"]),
    "register_load_adapter_handler": ("/adapters", ["POST"]),
    "register_unload_adapter_handler": ("/adapters/{adapter_name}", ["DELETE"]),
}

# Registrations with a computed path, each explained; anything else computed is an error.
_KNOWN_DYNAMIC = {
    # With scale-out off, every render/derender/token route is re-registered under its
    # own path as a 403 stub: the same paths, already listed from their routers.
    ("vllm/entrypoints/scale_out/factories.py", "route.path"),
    # FastAPI's default `/docs/oauth2-redirect`, re-registered by the offline docs.
    ("vllm/entrypoints/serve/instrumentator/offline_docs.py", "app.swagger_ui_oauth2_redirect_url"),
}

# Separate small apps in the package that are not the API server (other ports/processes).
_OTHER_APPS = {
    "vllm/entrypoints/launchers/dp_supervisor.py": "data-parallel supervisor's own app",
    "vllm/entrypoints/cli/preload.py": "`vllm preload`'s own app",
}

_ROUTERS = "vllm/entrypoints/launchers/api_server/routers.py"
_DEV = "VLLM_SERVER_DEV_MODE=1 (routers.py:46)"

# module -> when vLLM registers its routes (routers.py line numbers from 0.33.0).
CONDITIONS = {
    "vllm/entrypoints/serve/instrumentator/basic.py": "always (routers.py:20)",
    "vllm/entrypoints/serve/instrumentator/health.py": "always (routers.py:20)",
    "vllm/entrypoints/serve/instrumentator/metrics.py": "always (routers.py:20)",
    "vllm/entrypoints/serve/instrumentator/offline_docs.py": "--enable-offline-docs",
    "vllm/entrypoints/launchers/app.py": "unless --disable-fastapi-docs",
    "vllm/entrypoints/serve/lora/api_router.py": "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1",
    "vllm/entrypoints/serve/profile/api_router.py": "--profiler-config with a profiler",
    "vllm/entrypoints/serve/tokenize/api_router.py": "always (routers.py:20)",
    "vllm/entrypoints/openai/models/api_router.py": "always (routers.py:26)",
    "vllm/entrypoints/generate/structured_decisions/api_router.py": "always (routers.py:32)",
    "vllm/entrypoints/openai/decisions/api_router.py": "always (routers.py:38)",
    "vllm/entrypoints/serve/sagemaker/api_router.py": "always (routers.py:44)",
    "vllm/entrypoints/serve/dev/cache/api_router.py": _DEV,
    "vllm/entrypoints/serve/dev/rpc/api_router.py": _DEV,
    "vllm/entrypoints/serve/dev/server_info/api_router.py": _DEV,
    "vllm/entrypoints/serve/dev/sleep/api_router.py": _DEV,
    "vllm/entrypoints/rl/online/api_router.py": "VLLM_SERVER_DEV_MODE=1 (routers.py:51)",
    "vllm/entrypoints/openai/chat_completion/api_router.py": "generate task (routers.py:55)",
    "vllm/entrypoints/openai/responses/api_router.py": "generate task (routers.py:55)",
    "vllm/entrypoints/openai/completion/api_router.py": "generate task (routers.py:55)",
    "vllm/entrypoints/anthropic/api_router.py": "generate task (routers.py:55)",
    "vllm/entrypoints/cohere/api_router.py": "generate task and VLLM_ENABLE_COHERE_API=1",
    "vllm/entrypoints/generate/generative_scoring/api_router.py": "generate task (routers.py:55)",
    "vllm/entrypoints/serve/elastic_ep/api_router.py": "generate task (routers.py:62)",
    "vllm/entrypoints/scale_out/render/api_router.py": (
        "generate or render task; --enable-scale-out or --tokens-only, else a 403 stub"
    ),
    "vllm/entrypoints/scale_out/derender/api_router.py": (
        "generate or render task; --enable-scale-out or --tokens-only, else a 403 stub"
    ),
    "vllm/entrypoints/scale_out/token_in_token_out/api_router.py": (
        "generate task; --enable-scale-out or --tokens-only, else a 403 stub"
    ),
    "vllm/entrypoints/speech_to_text/realtime/api_router.py": "realtime task (routers.py:73)",
    "vllm/entrypoints/speech_to_text/transcription/api_router.py": (
        "transcription task (routers.py:73)"
    ),
    "vllm/entrypoints/speech_to_text/translation/api_router.py": (
        "transcription task (routers.py:73)"
    ),
    "vllm/entrypoints/pooling/pooling/api_router.py": "a pooling task (routers.py:80)",
    "vllm/entrypoints/pooling/classify/api_router.py": "classify task (routers.py:80)",
    "vllm/entrypoints/pooling/embed/api_router.py": "embed task (routers.py:80)",
    "vllm/entrypoints/pooling/token_embed/api_router.py": "token_embed task (routers.py:80)",
    "vllm/entrypoints/pooling/scoring/api_router.py": "a scoring model (routers.py:80)",
    "vllm/entrypoints/serve/fault_tolerance/api_router.py": "--enable-fault-tolerance",
    **{module: f"not the API server: {what}" for module, what in _OTHER_APPS.items()},
}

_TIO = "vllm/entrypoints/scale_out/token_in_token_out/api_router.py"
# Refinements of a module's condition or a path's class for single registrations.
OVERRIDES = {
    ("vllm/entrypoints/serve/tokenize/api_router.py", "/tokenizer_info"): (
        "--enable-tokenizer-info-endpoint",
        None,
    ),
    ("vllm/entrypoints/cohere/api_router.py", "/cohere/v2/chat/render"): (
        "VLLM_ENABLE_COHERE_API=1 and --enable-scale-out or --tokens-only",
        None,
    ),
    (_TIO, "/abort_requests"): ("--tokens-only, unless the RL router has it", "scale-out"),
}

CLIENT, POOLING = "client", "pooling"
# path -> classification. `client`: forwarded by default; `pooling`: forwarded when
# FORWARD_POOLING_ROUTES is on; any other class: never forwarded.
CLASSES = {
    # OpenAI-compatible generation
    "/v1/chat/completions": CLIENT,
    "/v1/chat/completions/batch": CLIENT,
    "/v1/completions": CLIENT,
    "/v1/responses": CLIENT,
    "/v1/responses/{response_id}": CLIENT,
    "/v1/responses/{response_id}/cancel": CLIENT,
    # Anthropic Messages
    "/v1/messages": CLIENT,
    "/v1/messages/count_tokens": CLIENT,
    # models, tokenizer, version
    "/v1/models": CLIENT,
    "/tokenize": CLIENT,
    "/detokenize": CLIENT,
    "/tokenizer_info": CLIENT,
    "/version": CLIENT,
    # audio (HTTP; the realtime websocket is not proxied)
    "/v1/audio/transcriptions": CLIENT,
    "/v1/audio/translations": CLIENT,
    "/v1/realtime": "websocket",
    # embeddings, and the other pooling APIs (only for a pooling model)
    "/v1/embeddings": CLIENT,
    "/pooling": POOLING,
    "/classify": POOLING,
    "/score": POOLING,
    "/v1/score": POOLING,
    "/rerank": POOLING,
    "/v1/rerank": POOLING,
    "/v2/rerank": POOLING,
    "/v2/embed": POOLING,
    # vLLM-specific generation APIs the audit does not reassemble
    "/v1/decisions": "vllm-extension",
    "/v1/systemone": "vllm-extension",
    "/generative_scoring": "vllm-extension",
    "/cohere/v2/chat": "vllm-extension",
    "/cohere/v2/chat/render": "scale-out",
    # health, load, metrics, docs: the sidecar answers /health itself
    "/health": "health",
    "/ready": "health",
    "/readyz": "health",
    "/ping": "health",
    "/load": "metrics",
    "/metrics": "metrics",
    "/kv_event_sources": "metrics",
    "/docs": "docs",
    "/docs/oauth2-redirect": "docs",
    "/redoc": "docs",
    "/openapi.json": "docs",
    "/static": "docs",
    # SageMaker hosting
    "/invocations": "sagemaker",
    # engine administration
    "/v1/load_lora_adapter": "lora",
    "/v1/unload_lora_adapter": "lora",
    "/adapters": "lora",  # the same handlers, mounted by the SageMaker bootstrap
    "/adapters/{adapter_name}": "lora",
    "/start_profile": "profiling",
    "/stop_profile": "profiling",
    "/sleep": "sleep-wake",
    "/wake_up": "sleep-wake",
    "/is_sleeping": "sleep-wake",
    "/release_kv_cache_memory": "sleep-wake",
    "/reset_prefix_cache": "dev",
    "/reset_mm_cache": "dev",
    "/reset_encoder_cache": "dev",
    "/collective_rpc": "dev",
    "/server_info": "dev",
    "/scale_elastic_ep": "elastic-ep",
    "/is_scaling_elastic_ep": "elastic-ep",
    "/fault_tolerance/apply": "fault-tolerance",
    "/fault_tolerance/status": "fault-tolerance",
    "/pause": "rl",
    "/resume": "rl",
    "/abort_requests": "rl",
    "/is_paused": "rl",
    "/init_weight_transfer_engine": "rl",
    "/shutdown_weight_transfer_engine": "rl",
    "/start_weight_update": "rl",
    "/start_draft_weight_update": "rl",
    "/update_weights": "rl",
    "/finish_weight_update": "rl",
    "/update_weight_version": "rl",
    "/weight_info": "rl",
    "/weight_checker": "rl",
    "/get_world_size": "rl",
    # disaggregated serving: prompt rendering and token-in/token-out
    "/v1/chat/completions/render": "scale-out",
    "/v1/completions/render": "scale-out",
    "/v1/messages/render": "scale-out",
    "/v1/responses/render": "scale-out",
    "/v1/chat/completions/derender": "scale-out",
    "/v1/completions/derender": "scale-out",
    "/inference/v1/generate": "scale-out",
    "/inference/v1/abort_requests": "scale-out",
}

_FASTAPI_DOCS = (
    ("/openapi.json", ["GET", "HEAD"]),
    ("/docs", ["GET", "HEAD"]),
    ("/docs/oauth2-redirect", ["GET", "HEAD"]),
    ("/redoc", ["GET", "HEAD"]),
)


class UnsupportedSource(ValueError):
    """A registration the walk cannot read, or a route the tables do not classify."""


def _literal_path(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _receiver(func: ast.Attribute) -> str:
    return ast.unparse(func.value)


def _methods_kw(call: ast.Call) -> list[str] | None:
    for kw in call.keywords:
        if kw.arg == "methods" and isinstance(kw.value, ast.List | ast.Tuple | ast.Set):
            out = [_literal_path(e) for e in kw.value.elts]
            if all(isinstance(m, str) for m in out):
                return sorted(str(m).upper() for m in out)
    return None


def routes_in_source(module: str, source: str) -> list[dict[str, object]]:
    """Every route registration in one module, as (path, methods, module, line)."""
    found: list[dict[str, object]] = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += _sagemaker_routes(module, node)
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = path_node = None
        methods: list[str] | None = None
        if isinstance(func, ast.Name) and func.id == "Mount" and node.args:
            kind, path_node, methods = "mount", node.args[0], ["*"]
        elif isinstance(func, ast.Attribute) and node.args:
            receiver = _receiver(func).lower()
            if not ("router" in receiver or "app" in receiver):
                continue
            if func.attr in _METHOD_ATTRS:
                kind, path_node, methods = "route", node.args[0], [_METHOD_ATTRS[func.attr]]
            elif func.attr in ("api_route", "add_api_route"):
                kind, path_node, methods = "route", node.args[0], _methods_kw(node) or ["GET"]
            elif func.attr == "add_websocket_route":
                kind, path_node, methods = "route", node.args[0], ["WEBSOCKET"]
            elif func.attr == "mount":
                kind, path_node, methods = "mount", node.args[0], ["*"]
        if kind is None or path_node is None:
            continue
        path = _literal_path(path_node)
        if path is None:
            if (module, ast.unparse(path_node)) in _KNOWN_DYNAMIC:
                continue
            raise UnsupportedSource(f"{module}:{node.lineno}: route path is not a literal")
        if not path.startswith("/"):
            continue
        found.append(
            {"path": path, "methods": methods, "module": module, "line": node.lineno, "kind": kind}
        )
    return found


def _sagemaker_routes(
    module: str, function: ast.FunctionDef | ast.AsyncFunctionDef
) -> list[dict[str, object]]:
    """The routes the SageMaker bootstrap mounts for a handler its decorators register."""
    found: list[dict[str, object]] = []
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr in SAGEMAKER_HANDLERS:
            path, methods = SAGEMAKER_HANDLERS[target.attr]
            found.append(
                {
                    "path": path,
                    "methods": methods,
                    "module": module,
                    "line": decorator.lineno,
                    "kind": "sagemaker-bootstrap",
                }
            )
    return found


def _fastapi_docs(module: str, source: str) -> list[dict[str, object]]:
    """FastAPI's default documentation routes, where `launchers/app.py` builds the app."""
    for node in ast.walk(ast.parse(source, module)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "FastAPI"
            and not node.keywords[1:]  # FastAPI(lifespan=...): the docs on
        ):
            line = node.lineno
            return [
                {"path": p, "methods": m, "module": module, "line": line, "kind": "route"}
                for p, m in _FASTAPI_DOCS
            ]
    raise UnsupportedSource(f"{module}: no FastAPI(...) call with the default docs")


def classify(route: dict[str, object]) -> dict[str, object]:
    module, path = str(route["module"]), str(route["path"])
    if module not in CONDITIONS:
        raise UnsupportedSource(f"{module}:{route['line']}: no condition for {path}")
    if path not in CLASSES:
        raise UnsupportedSource(f"{module}:{route['line']}: {path} is not classified")
    condition, cls = OVERRIDES.get((module, path), (None, None))
    cls = "other-app" if module in _OTHER_APPS else cls or CLASSES[path]
    condition = condition or CONDITIONS[module]
    return {**route, "condition": condition, "class": cls}


def extract(wheel: Path) -> dict[str, object]:
    routes: list[dict[str, object]] = []
    version = None
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name == "vllm/_version.py":
                tree = ast.parse(zf.read(name).decode())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
                    ):
                        version = ast.literal_eval(node.value)
            if not (name.startswith("vllm/entrypoints/") and name.endswith(".py")):
                continue
            source = zf.read(name).decode()
            routes += routes_in_source(name, source)
            if name == "vllm/entrypoints/launchers/app.py":
                routes += _fastapi_docs(name, source)
    if version is None:
        raise UnsupportedSource("vllm/_version.py: no __version__")
    classified = sorted(
        (classify(r) for r in routes),
        key=lambda r: (str(r["path"]), str(r["module"]), int(str(r["line"])), r["methods"]),
    )
    return {"vllmVersion": version, "routers": _ROUTERS, "routes": classified}


def render(table: dict[str, object]) -> str:
    """The table as JSON with one route a line, so a diff shows route by route."""
    routes = table["routes"]
    assert isinstance(routes, list)
    head = {k: v for k, v in table.items() if k != "routes"}
    lines = [json.dumps(r) for r in routes]
    body = ",\n  ".join(lines)
    return json.dumps(head)[:-1] + ', "routes": [\n  ' + body + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render(extract(args.wheel))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} differs from {args.wheel}; regenerate it", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
