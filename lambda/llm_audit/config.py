"""The ingestion's settings, read once per invocation from the Lambda's environment.

| variable | default | meaning |
| --- | --- | --- |
| `TABLE_NAME` | `CentralLLMAudit` | DynamoDB table receiving the items |
| `AUDIT_PREFIX` | `logs` | only keys under `<prefix>/` are ingested |
| `MAX_PREVIEW_CHARS` | `2048` | previews are cut to this many characters |
| `RETENTION_DAYS` | unset | when set, items get `expiresAt` (TTL, epoch seconds) |
| `ARCHIVE_BUCKET` | unset | when set, every ingested object is copied there |
| `MAX_OBJECT_BYTES` | 128 MiB | an object with more content (decompressed) fails |
| `MAX_LINE_BYTES` | 8 MiB | a longer line is a bad line (JSON parsing takes up to ~30x) |
| `AWS_REGION` | the SDK's | region of the clients |

Invariant: a bad value raises `ConfigError` naming the variable, so a
misconfigured function fails loudly (and its events wait in the DLQ) instead
of writing wrong items.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llm_audit.items import ItemRules
from llm_audit.objects import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_OBJECT_BYTES, Limits


class ConfigError(ValueError):
    """An environment variable holds a value the ingestion cannot use."""


def _positive_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    table_name: str = "CentralLLMAudit"
    audit_prefix: str = "logs"
    max_preview_chars: int = 2048
    retention_days: int | None = None
    archive_bucket: str | None = None
    region: str | None = None
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            table_name=env.get("TABLE_NAME", "").strip() or cls.table_name,
            audit_prefix=env.get("AUDIT_PREFIX", cls.audit_prefix).strip().strip("/"),
            max_preview_chars=_positive_int(env, "MAX_PREVIEW_CHARS", cls.max_preview_chars)
            or cls.max_preview_chars,
            retention_days=_positive_int(env, "RETENTION_DAYS", None),
            archive_bucket=env.get("ARCHIVE_BUCKET", "").strip() or None,
            region=env.get("AWS_REGION", "").strip() or None,
            max_object_bytes=_positive_int(env, "MAX_OBJECT_BYTES", cls.max_object_bytes)
            or cls.max_object_bytes,
            max_line_bytes=_positive_int(env, "MAX_LINE_BYTES", cls.max_line_bytes)
            or cls.max_line_bytes,
        )

    @property
    def item_rules(self) -> ItemRules:
        return ItemRules(self.max_preview_chars, self.retention_days)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_object_bytes, self.max_line_bytes)
