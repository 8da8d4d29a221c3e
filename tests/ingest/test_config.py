"""The Lambda's settings come from its environment; bad values name the variable."""

from __future__ import annotations

import pytest

from llm_audit.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Settings()),
        (
            {
                "TABLE_NAME": "T",
                "AUDIT_PREFIX": "/audit/",
                "MAX_PREVIEW_CHARS": "100",
                "RETENTION_DAYS": "400",
                "ARCHIVE_BUCKET": "central-llm-audit-raw",
                "AWS_REGION": "eu-central-1",
            },
            Settings("T", "audit", 100, 400, "central-llm-audit-raw", "eu-central-1"),
        ),
        ({"RETENTION_DAYS": "", "ARCHIVE_BUCKET": " "}, Settings()),
    ],
)
def test_settings_from_env(env: dict[str, str], expected: Settings) -> None:
    assert Settings.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MAX_PREVIEW_CHARS": "2k"}, "MAX_PREVIEW_CHARS"),
        ({"MAX_PREVIEW_CHARS": "0"}, "MAX_PREVIEW_CHARS"),
        ({"RETENTION_DAYS": "-1"}, "RETENTION_DAYS"),
        ({"RETENTION_DAYS": "thirty"}, "RETENTION_DAYS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)
