"""docs/audit-pipeline.md names only what exists: options, subcommands, settings, files."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from central_llm_ops import audit_query, dlq_redrive, local_stack
from sidecar_audit.config import describe_settings

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "audit-pipeline.md"
LAMBDA_SETTINGS = {"TABLE_NAME", "AUDIT_PREFIX", "MAX_PREVIEW_CHARS", "RETENTION_DAYS"}
LAMBDA_SETTINGS |= {"ARCHIVE_BUCKET", "AWS_REGION", "AWS_ENDPOINT_URL"}


def text() -> str:
    return GUIDE.read_text()


def section(heading: str) -> str:
    return text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}


def test_the_local_stack_options_table_matches_the_command() -> None:
    documented = set(re.findall(r"`(--[a-z-]+)", section("Running it locally")))
    assert documented == options(local_stack._parser())


def test_documented_query_and_redrive_commands_exist() -> None:
    subcommands = set(re.findall(r"central-llm-audit-query (\w+)", text()))
    choices = audit_query.parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert subcommands and subcommands <= set(choices)
    query_flags = set(re.findall(r"central-llm-audit-query \w+ [^\n#]*", text()))
    used = {flag for line in query_flags for flag in re.findall(r"--[a-z-]+", line)}
    known = set().union(*(options(p) for p in choices.values()))
    assert used <= known, used - known
    redrive_flags = set(re.findall(r"central-llm-dlq-redrive (--[a-z-]+)", text()))
    redrive_flags |= {f for f in re.findall(r"--[a-z-]+", section("Redriving the DLQ"))}
    assert redrive_flags <= options(dlq_redrive._parser()), redrive_flags


def test_every_setting_named_is_a_real_setting() -> None:
    sidecar = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", describe_settings()))
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})[`=]", text()))
    assert named, "the guide names no settings?"
    assert named <= sidecar | LAMBDA_SETTINGS, sorted(named - sidecar - LAMBDA_SETTINGS)


def test_linked_files_and_anchors_exist() -> None:
    for target, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", text()):
        path = (GUIDE.parent / target).resolve()
        assert path.exists(), target
        if anchor:
            headings = [
                re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in path.read_text().splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"{target}#{anchor}"


def test_the_readme_links_the_guide_and_starts_its_section_with_the_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/audit-pipeline.md)" in readme
    body = readme.split("## Running without Docker\n", 1)[1].lstrip()
    assert body.startswith("```sh\nscripts/local-stack")
