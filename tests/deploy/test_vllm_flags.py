"""The vLLM launch flags against the pinned release, and the extractor that lists them.

`vllm_engine/vllm-<version>-flags.txt` is the set of long options the pinned
`vllm serve` accepts, extracted from the PyPI wheel by `vllm_engine/extract_flags.py`.
Here: every image pin names that version, every flag `entrypoint.sh` can emit is in
the list, and the extractor follows the parser-building patterns it claims to (run on
a small synthetic wheel). With `VLLM_WHEEL` pointing at the real wheel, the committed
list is also checked against it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.deploy.tools import ROOT

ENGINE = ROOT / "vllm_engine"
ENTRYPOINT = ENGINE / "entrypoint.sh"
EXTRACTOR = ENGINE / "extract_flags.py"
ENTRYPOINT_OWN_OPTIONS = {"--print", "--help"}


@pytest.fixture(scope="module")
def extractor() -> Iterator[ModuleType]:
    """`vllm_engine/extract_flags.py`, a script beside the Dockerfile, loaded as a module."""
    spec = importlib.util.spec_from_file_location("extract_flags", EXTRACTOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def pinned_version() -> str:
    dockerfile = (ENGINE / "Dockerfile").read_text()
    match = re.search(r"^ARG VLLM_BASE_IMAGE=vllm/vllm-openai:v(\d+\.\d+\.\d+)$", dockerfile, re.M)
    assert match, "vllm_engine/Dockerfile pins no vllm/vllm-openai:vX.Y.Z"
    return match.group(1)


def flags_file() -> Path:
    return ENGINE / f"vllm-{pinned_version()}-flags.txt"


def static_flags() -> set[str]:
    """Every `--option` inside the script's `args=(...)` / `args+=(...)` arrays."""
    flags: set[str] = set()
    in_array = False
    for line in ENTRYPOINT.read_text().splitlines():
        code = line.split("#", 1)[0]
        if re.match(r"\s*args\+?=\(", code):
            in_array = True
        if in_array:
            flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code))
            if ")" in code:
                in_array = False
    return flags - ENTRYPOINT_OWN_OPTIONS


def printed_flags(**env: str) -> set[str]:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "--print"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return {word for word in result.stdout.split() if word.startswith("--")}


# --- the pins and the launch flags ----------------------------------------------------------


def test_every_image_pin_names_the_version_whose_flags_are_committed() -> None:
    version = pinned_version()
    assert flags_file().exists(), f"run extract_flags.py on the vLLM {version} wheel"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())
    cpu_image = compose["services"]["vllm"]["build"]["args"]["VLLM_BASE_IMAGE"]
    gpu_image = gpu["services"]["vllm"]["build"]["args"]["VLLM_BASE_IMAGE"]
    assert cpu_image.endswith(f":-vllm/vllm-openai-cpu:v{version}-x86_64}}"), cpu_image
    assert gpu_image.endswith(f":-vllm/vllm-openai:v{version}}}"), gpu_image
    assert f" in vLLM {version} " in flags_file().read_text().splitlines()[0]
    stale = sorted(p.name for p in ENGINE.glob("vllm-*-flags.txt") if p != flags_file())
    assert stale == [], "only the pinned release's list is kept"


def test_every_flag_the_entrypoint_can_emit_exists_in_the_pinned_vllm(
    extractor: ModuleType,
) -> None:
    known = extractor.read_flags(flags_file())
    emitted = static_flags() | printed_flags() | printed_flags(MODEL="/models/other")
    missing = sorted(emitted - known)
    assert missing == [], f"vllm serve {pinned_version()} has no {missing}"


def test_the_static_scan_sees_what_the_script_prints() -> None:
    # Guards the scan above: if it went blind, the check would pass vacuously.
    assert static_flags() == printed_flags()
    assert {"--enable-request-id-headers", "--shutdown-timeout"} <= static_flags()
    assert {"--enable-auto-tool-choice", "--tool-call-parser"} <= static_flags()


def test_the_committed_list_has_the_flags_the_setup_depends_on(extractor: ModuleType) -> None:
    known = extractor.read_flags(flags_file())
    assert {"--served-model-name", "--max-model-len", "--host", "--port"} <= known
    assert {"--no-enable-request-id-headers", "--disable-request-id-headers"} <= known
    assert "--no-max-model-len" not in known  # only booleans get negations
    assert all(flag.startswith("--") for flag in known)


@pytest.mark.skipif("VLLM_WHEEL" not in os.environ, reason="set VLLM_WHEEL to a vLLM wheel")
def test_the_committed_list_matches_the_wheel() -> None:
    result = subprocess.run(
        [sys.executable, str(EXTRACTOR), os.environ["VLLM_WHEEL"], "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif("VLLM_WHEEL" not in os.environ, reason="set VLLM_WHEEL to a vLLM wheel")
def test_the_tool_parsers_we_name_are_registered_in_the_wheel() -> None:
    """`mistral` (the engine's default) and `hermes` (compose's Qwen) are parser names."""
    import zipfile

    with zipfile.ZipFile(os.environ["VLLM_WHEEL"]) as wheel:
        registry = wheel.read("vllm/tool_parsers/__init__.py").decode()
    for name in ("mistral", "hermes"):
        assert f'    "{name}": (' in registry, name


# --- the extractor on a synthetic wheel -----------------------------------------------------

FAKE_SOURCES = {
    "vllm/_version.py": "__version__ = version = '9.9.9'\n",
    "vllm/config/__init__.py": "from vllm.config.model import ModelConfig\n",
    "vllm/config/model.py": """
from typing import Literal
Mode = Literal["a", "b"]
Switch = bool | None

class Base:
    inherited_flag: bool = False

class ModelConfig(Base):
    max_model_len: int = 0
    enforce_eager: bool = False
    hf_token: bool | str | None = None
    mode: Mode = "a"
    switch: Switch = None
""",
    "vllm/engine/arg_utils.py": """
import argparse
from vllm.config import ModelConfig

class EngineArgs:
    @staticmethod
    def add_cli_args(parser):
        model_kwargs = get_kwargs(ModelConfig)
        group = parser.add_argument_group("ModelConfig")
        group.add_argument("--max-model-len", **model_kwargs["max_model_len"])
        group.add_argument("--enforce-eager", **model_kwargs["enforce_eager"])
        group.add_argument("--hf-token", **model_kwargs["hf_token"])
        group.add_argument("--mode", "-m", **model_kwargs["mode"])
        switch = model_kwargs["switch"]
        group.add_argument("--switch", **switch)
        group.add_argument("--inherited", **{**model_kwargs["inherited_flag"], "default": 1})
        parser.add_argument("--quiet", action="store_true")
        parser.add_argument("--enable-thing", action=argparse.BooleanOptionalAction)
        return parser

class AsyncEngineArgs(EngineArgs):
    @staticmethod
    def add_cli_args(parser):
        parser = EngineArgs.add_cli_args(parser)
        parser.add_argument("--enable-log-requests", action=argparse.BooleanOptionalAction)
        return parser
""",
    "vllm/entrypoints/common/cli_args.py": """
from vllm.engine.arg_utils import AsyncEngineArgs

class BaseFrontendArgs:
    disable_frontend_thing: bool = False
    chat_template: str | None = None
    dropped: int = 0

    @classmethod
    def add_cli_args(cls, parser):
        frontend_kwargs = get_kwargs(cls)
        for key, value in frontend_kwargs.items():
            extra_flags = value.pop("flags", [])
            parser.add_argument(*extra_flags, f"--{key.replace('_', '-')}", **value)
        return parser

class FrontendArgs(BaseFrontendArgs):
    host: str | None = None

    @classmethod
    def _customize_cli_kwargs(cls, frontend_kwargs):
        del frontend_kwargs["dropped"]
        return frontend_kwargs

def make_arg_parser(parser):
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--api-server-count", "-asc", type=int)
    parser = FrontendArgs.add_cli_args(parser)
    parser = AsyncEngineArgs.add_cli_args(parser)
    return parser
""",
    "vllm/utils/argparse_utils.py": """
class EnableDisableAction:
    _inverse_prefixes = {"--enable-": "--disable-", "--disable-": "--enable-"}
""",
}


def fake_wheel(tmp_path: Path, sources: dict[str, str]) -> Path:
    path = tmp_path / "vllm-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in sources.items():
            archive.writestr(name, text)
    return path


def test_extractor_follows_literals_dataclass_fields_and_boolean_actions(
    extractor: ModuleType, tmp_path: Path
) -> None:
    version, flags = extractor.serve_flags(fake_wheel(tmp_path, FAKE_SOURCES))
    assert version == "9.9.9"
    assert flags == sorted(
        [
            "--help",
            "--api-server-count",  # literal; "-asc" and the positional are not long options
            # dataclass-derived frontend fields, inherited ones included, deleted ones not
            "--host",
            "--chat-template",
            "--disable-frontend-thing",
            "--no-disable-frontend-thing",
            "--enable-frontend-thing",
            # **kwargs traced to config fields: bool → negation, `bool | str | None` → not
            "--max-model-len",
            "--enforce-eager",
            "--no-enforce-eager",
            "--hf-token",
            "--mode",
            "--switch",  # an alias of `bool | None`
            "--no-switch",
            "--inherited",  # a bool field of the config's base class, through a dict spread
            "--no-inherited",
            "--quiet",  # store_true: no negation
            "--enable-thing",
            "--no-enable-thing",
            "--disable-thing",
            "--enable-log-requests",  # reached through the subclass and its base
            "--no-enable-log-requests",
            "--disable-log-requests",
        ]
    )


def test_extractor_refuses_a_pattern_it_cannot_follow(
    extractor: ModuleType, tmp_path: Path
) -> None:
    sources = dict(FAKE_SOURCES)
    sources["vllm/entrypoints/common/cli_args.py"] = FAKE_SOURCES[
        "vllm/entrypoints/common/cli_args.py"
    ].replace('parser.add_argument("--api-server-count"', "parser.add_argument(NAME")
    with pytest.raises(extractor.UnsupportedSource, match="not a literal"):
        extractor.serve_flags(fake_wheel(tmp_path, sources))


def test_extractor_cli_writes_and_checks_the_list(extractor: ModuleType, tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, FAKE_SOURCES)
    output = tmp_path / "flags.txt"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(EXTRACTOR), str(wheel), "--output", str(output), *extra]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    assert run("--check").returncode == 1  # nothing written yet
    assert run().returncode == 0
    assert "--enforce-eager" in extractor.read_flags(output)
    assert run("--check").returncode == 0
    output.write_text(output.read_text() + "--extra\n")
    assert run("--check").returncode == 1
