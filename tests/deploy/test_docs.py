"""docs/deployment.md: covers what an operator needs and names only things that exist."""

from __future__ import annotations

import re

from tests.deploy.tools import ROOT, SCRIPTS

GUIDE = ROOT / "docs" / "deployment.md"


def text() -> str:
    return GUIDE.read_text()


def test_guide_has_the_sections_an_operator_needs() -> None:
    headings = [line.lstrip("# ").lower() for line in text().splitlines() if line.startswith("## ")]
    for needed in (
        "provisioning",
        "first deploy",
        "upgrades",
        "rollback",
        "operations",
        "alarms",
        "local stack",
    ):
        assert any(needed in heading for heading in headings), needed


def test_every_script_is_documented_and_every_documented_script_exists() -> None:
    mentioned = set(re.findall(r"scripts/([\w-]+\.sh)", text()))
    present = {p.name for p in SCRIPTS.glob("*.sh")}
    assert present <= mentioned, sorted(present - mentioned)
    assert mentioned <= present, sorted(mentioned - present)


def test_linked_repository_files_exist() -> None:
    for target in re.findall(r"\]\((\.\./[^)#]+)", text()):
        assert (GUIDE.parent / target).resolve().exists(), target


def test_the_stop_order_fact_is_written_down_with_its_source() -> None:
    assert "reverse" in text() and "dependsOn" in text()
    assert "API_ContainerDependency" in text()
