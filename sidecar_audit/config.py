"""The sidecar's settings: read once from the environment, validated, immutable.

Every variable has a default that suits the ECS task; a bad value stops the
process at start with a message naming the variable (`ConfigError`). The table
in the README is generated from `SETTINGS` by `describe_settings()` so the docs
cannot drift from the code (a test compares them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .routing import CLIENT_PATHS, POOLING_PATHS, reaches_admin


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


# vLLM 0.33's client-facing routes (routing.CLIENT_PATHS, from its route table).
DEFAULT_ALLOWED_PATHS = ",".join(CLIENT_PATHS)
DEFAULT_REDACT_PATTERNS = "auth,token,key,secret,password,passwd,cookie,session,credential"
DEFAULT_REDACTED_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number greater than 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535)")
    return value


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("must be a base URL without a path or query")
    return f"{parts.scheme}://{parts.netloc}"


def _agent_uri(raw: str) -> str:
    """The ECS agent's API root (`http://169.254.170.2/api/<id>`): path kept, no query."""
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be empty or an http:// URL with a host (the ECS agent sets it)")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return raw.rstrip("/")


def _expiry_minutes(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 2880:
        raise ValueError("must be a whole number of minutes from 1 to 2880 (ECS's range)")
    return value


def _path_patterns(raw: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not patterns:
        raise ValueError("must list at least one path")
    for pattern in patterns:
        if not pattern.startswith("/") or "*" in pattern[:-1]:
            raise ValueError(f"{pattern!r}: a path starts with / and may only end in *")
        for segment in pattern.split("/"):
            if ("{" in segment or "}" in segment) and not re.fullmatch(r"\{\w+\}", segment):
                raise ValueError(f"{pattern!r}: a parameter is a whole segment like {{id}}")
        if not pattern.endswith("*") and reaches_admin(pattern):
            raise ValueError(f"{pattern!r} is one of vLLM's admin routes, never forwarded")
    return patterns


def _header_names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    for name in names:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", name):
            raise ValueError(f"{name!r} is not a header name")
    return names


def _name_fragments(raw: str) -> tuple[str, ...]:
    fragments = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    for fragment in fragments:
        if not re.fullmatch(r"[a-z0-9_.-]+", fragment):
            raise ValueError(f"{fragment!r}: use lower-case letters, digits, '_', '.', '-'")
    return fragments


def _model_ids(raw: str) -> frozenset[str]:
    ids = frozenset(m.strip() for m in raw.split(",") if m.strip())
    if len(ids) > 32:
        raise ValueError("at most 32 model ids (each is a label value on every inference series)")
    return ids


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _log_level(raw: str) -> str:
    return _choice("debug", "info", "warning", "error")(raw).upper()


def _bucket(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", raw):
        raise ValueError("is not a valid S3 bucket name")
    return raw


def _prefix(raw: str) -> str:
    value = raw.strip("/")
    if not value or not re.fullmatch(r"[A-Za-z0-9!_.*'()/-]+", value):
        raise ValueError("must be a non-empty S3 key prefix of safe characters")
    return value


@dataclass(frozen=True)
class Setting:
    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("LISTEN_HOST", "listen_host", "0.0.0.0", str, "Address the proxy listens on."),
    Setting("LISTEN_PORT", "listen_port", "8000", _port, "Port of the proxy (the public port)."),
    Setting(
        "UPSTREAM_URL",
        "upstream_url",
        "http://127.0.0.1:8001",
        _http_url,
        "Base URL of vLLM's OpenAI server.",
    ),
    Setting(
        "UPSTREAM_CONNECT_TIMEOUT_S",
        "upstream_connect_timeout",
        "10",
        _positive_float,
        "Seconds to open a connection to vLLM (exceeded: 504 `upstream_timeout`).",
    ),
    Setting(
        "UPSTREAM_READ_TIMEOUT_S",
        "upstream_read_timeout",
        "600",
        _positive_float,
        "Seconds vLLM may stay silent (before the first byte or between chunks). "
        "There is no total timeout: a long generation is never cut.",
    ),
    Setting(
        "UPSTREAM_KEEPALIVE_S",
        "upstream_keepalive",
        "4",
        _positive_float,
        "Seconds an idle pooled upstream connection is kept; below vLLM's own 5 s "
        "so the sidecar never reuses a connection vLLM is closing.",
    ),
    Setting(
        "UPSTREAM_MAX_CONNECTIONS",
        "upstream_max_connections",
        "2048",
        _positive_int,
        "Upper bound of concurrent connections to vLLM.",
    ),
    Setting(
        "ALLOWED_PATHS",
        "allowed_paths",
        DEFAULT_ALLOWED_PATHS,
        _path_patterns,
        "Comma-separated paths forwarded to vLLM; a trailing `*` matches a prefix, a "
        "`{name}` segment any one segment. Anything else gets 404. The default is vLLM "
        "0.33's client-facing routes (`sidecar_audit/vllm_routes.json`). Admin, LoRA, "
        "profiling, sleep/wake, elastic-EP, RL, dev and fault-tolerance routes are never "
        "forwarded, even under a pattern that covers them, nor in the other spellings "
        "vLLM routes to them (behind any `--root-path` prefix, with a trailing `%0A`; "
        "`routing.NEVER_FORWARDED`); listing one is a start-up error.",
    ),
    Setting(
        "FORWARD_POOLING_ROUTES",
        "forward_pooling_routes",
        "false",
        _bool,
        "Also forward vLLM's pooling routes (`/pooling`, `/classify`, `/score`, "
        "`/rerank`, `/v1/score`, `/v1/rerank`, `/v2/rerank`, `/v2/embed`): on only when "
        "vLLM serves a pooling model.",
    ),
    Setting(
        "REQUIRE_AUDIT_HEADERS",
        "require_audit_headers",
        "true",
        _bool,
        "Reject (400) requests without `x-llm-source`, `x-llm-user`, "
        "`x-llm-request-type`. Turn off only for local use.",
    ),
    Setting(
        "MAX_REQUEST_BODY_BYTES",
        "max_request_body_bytes",
        "33554432",
        _positive_int,
        "Larger request bodies get 413.",
    ),
    Setting(
        "MAX_RECORDED_BODY_BYTES",
        "max_recorded_body_bytes",
        "1048576",
        _positive_int,
        "Bodies above this are truncated in the record (length and sha256 kept).",
    ),
    Setting(
        "REDACT_HEADERS",
        "extra_redacted_headers",
        "",
        _header_names,
        "Extra header names to redact in records, comma-separated (always redacted: "
        + ", ".join(DEFAULT_REDACTED_HEADERS)
        + ").",
    ),
    Setting(
        "REDACT_NAME_PATTERNS",
        "redact_name_patterns",
        DEFAULT_REDACT_PATTERNS,
        _name_fragments,
        "Header and query-parameter names containing any of these (case-insensitive) "
        "are redacted in records and logs, comma-separated.",
    ),
    Setting(
        "TRUST_EDGE_HEADERS",
        "trust_edge_headers",
        "false",
        _bool,
        "Record `x-edge-api-key-id` / `x-edge-request-id` as `apiKeyId` / `edgeRequestId`. "
        "Only behind API Gateway, whose integration sets them (clients cannot reach the "
        "task otherwise).",
    ),
    Setting(
        "REQUEST_BODY_TIMEOUT_S",
        "request_body_timeout",
        "60",
        _positive_float,
        "Seconds a client may take to send its whole request body (exceeded: 408).",
    ),
    Setting(
        "CLIENT_WRITE_STALL_S",
        "client_write_stall",
        "60",
        _positive_float,
        "A client that takes no bytes of its answer for this long is disconnected "
        "(`client_disconnected`; vLLM stops generating).",
    ),
    Setting(
        "UPSTREAM_QUEUE_TIMEOUT_S",
        "upstream_queue_timeout",
        "30",
        _positive_float,
        "Seconds a request may wait for a free upstream connection "
        "(`UPSTREAM_MAX_CONNECTIONS` all busy) before a 503.",
    ),
    Setting(
        "HEALTH_CACHE_S",
        "health_cache",
        "2",
        _non_negative_float,
        "Seconds vLLM's /health answer is reused by the sidecar's /health.",
    ),
    Setting(
        "AUDIT_BUCKET",
        "audit_bucket",
        "central-llm-audit",
        _bucket,
        "S3 bucket receiving audit objects.",
    ),
    Setting("AUDIT_PREFIX", "audit_prefix", "logs", _prefix, "Key prefix of audit objects."),
    Setting("AWS_REGION", "aws_region", "eu-central-1", str, "Region of the bucket."),
    Setting(
        "AUDIT_BATCH_MAX_RECORDS",
        "batch_max_records",
        "1000",
        _positive_int,
        "Records per batch object; `1` writes one `<requestId>.json` object per request.",
    ),
    Setting(
        "AUDIT_BATCH_MAX_BYTES",
        "batch_max_bytes",
        "8388608",
        _positive_int,
        "Uncompressed bytes per batch object.",
    ),
    Setting(
        "AUDIT_FLUSH_INTERVAL_S",
        "flush_interval",
        "5",
        _positive_float,
        "A batch is shipped at the latest this many seconds after its first record.",
    ),
    Setting(
        "AUDIT_DIGEST_INTERVAL_S",
        "digest_interval",
        "300",
        _non_negative_float,
        "A signed digest of the shipped objects (keys, SHA-256, seq ranges) is written to "
        "`<AUDIT_PREFIX>-digest/` at least this often and at shutdown; 0 turns digests off.",
    ),
    Setting(
        "AUDIT_DIGEST_KMS_KEY_ID",
        "digest_kms_key_id",
        "",
        str,
        "KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY) that signs the digests.",
    ),
    Setting(
        "AUDIT_DIGEST_SIGNING_KEY_FILE",
        "digest_signing_key_file",
        "",
        str,
        "Ed25519 private key (PEM) that signs the digests instead of KMS (compose, tests); "
        "with neither, digests are written unsigned.",
    ),
    Setting(
        "AUDIT_SPOOL_DIR",
        "spool_dir",
        "audit-spool",
        Path,
        "Directory of the on-disk spool; on ECS a volume that survives the container.",
    ),
    Setting(
        "AUDIT_SPOOL_MAX_BYTES",
        "spool_max_bytes",
        "1073741824",
        _positive_int,
        "Spool size at which the spool-full policy applies.",
    ),
    Setting(
        "AUDIT_SPOOL_FULL_POLICY",
        "spool_full_policy",
        "reject",
        _choice("reject", "drop"),
        "`reject`: refuse new requests with 503 while the spool is full (nothing "
        "unaudited is served); `drop`: serve and count the dropped records.",
    ),
    Setting(
        "AUDIT_SPOOL_FSYNC_INTERVAL_MS",
        "fsync_interval_ms",
        "50",
        _positive_float,
        "Group-commit interval: records are fsynced at most this long after append.",
    ),
    Setting(
        "AUDIT_MAX_CONCURRENT_UPLOADS",
        "max_concurrent_uploads",
        "4",
        _positive_int,
        "S3 uploads in flight at once.",
    ),
    Setting(
        "SHUTDOWN_GRACE_S",
        "shutdown_grace",
        "90",
        _non_negative_float,
        "On SIGTERM, how long in-flight requests and streams may take to finish.",
    ),
    Setting(
        "SHUTDOWN_SHIP_S",
        "shutdown_ship",
        "20",
        _non_negative_float,
        "On SIGTERM, after the grace period, how long to keep shipping the spool.",
    ),
    Setting("METRICS_HOST", "metrics_host", "0.0.0.0", str, "Address of the metrics listener."),
    Setting(
        "METRICS_PORT",
        "metrics_port",
        "9464",
        _port,
        "Prometheus metrics port (never the public port); 0 turns it off.",
    ),
    Setting(
        "METRICS_MODELS",
        "metrics_models",
        "",
        _model_ids,
        "Model ids (as clients send `model`) that get their own `model` label on the "
        "inference histograms, comma-separated; every other model is labelled `other`, so "
        "a client cannot grow the label set.",
    ),
    Setting(
        "HEALTH_MAX_SPOOL_BYTES",
        "health_max_spool_bytes",
        "805306368",
        _positive_int,
        "`/health` warns (body only, never the status) when the spool holds more than this.",
    ),
    Setting(
        "HEALTH_MAX_SHIP_LAG_S",
        "health_max_ship_lag",
        "300",
        _positive_float,
        "`/health` warns (body only) when the oldest unshipped record is older than this.",
    ),
    Setting(
        "EMF_INTERVAL_S",
        "emf_interval",
        "60",
        _non_negative_float,
        "Seconds between CloudWatch Embedded Metric Format log lines; 0 turns them off.",
    ),
    Setting(
        "SERVICE_NAME",
        "service_name",
        "central-llm-service",
        str,
        "The `ServiceName` dimension of the CloudWatch metrics.",
    ),
    Setting(
        "WORKERS",
        "workers",
        "1",
        _positive_int,
        "Worker processes sharing the port (SO_REUSEPORT); each writes its own spool "
        "segments in `AUDIT_SPOOL_DIR`, worker i serves metrics on `METRICS_PORT`+i.",
    ),
    Setting(
        "ECS_AGENT_URI",
        "ecs_agent_uri",
        "",
        _agent_uri,
        "Set by the ECS agent in every container (never by hand): the agent API that task "
        "scale-in protection is asked through. Empty (local, compose): no protection.",
    ),
    Setting(
        "TASK_PROTECTION",
        "task_protection",
        "true",
        _bool,
        "Keep the ECS task protected from scale-in while requests are in flight and for "
        "`TASK_PROTECTION_IDLE_S` after the last one (needs `ECS_AGENT_URI`, `WORKERS=1` "
        "and the task role's `ecs:UpdateTaskProtection`); see docs/observability.md.",
    ),
    Setting(
        "TASK_PROTECTION_MINUTES",
        "task_protection_minutes",
        "15",
        _expiry_minutes,
        "`ExpiresInMinutes` of each protection call (1-2880): how long a protection outlives "
        "a sidecar that died without removing it.",
    ),
    Setting(
        "TASK_PROTECTION_RENEW_S",
        "task_protection_renew",
        "0",
        _non_negative_float,
        "Seconds between renewals while protection is wanted; 0: half of "
        "`TASK_PROTECTION_MINUTES`. Must be shorter than the expiry.",
    ),
    Setting(
        "TASK_PROTECTION_IDLE_S",
        "task_protection_idle",
        "60",
        _positive_float,
        "Quiet period: protection is removed once no request has been in flight for this "
        "long (bursts do not toggle it; one agent call per change, never per request).",
    ),
    Setting(
        "TASK_PROTECTION_MAX_HOLD_S",
        "task_protection_max_hold",
        "3600",
        _non_negative_float,
        "Longest continuous protection: after it the task lets protection go even if busy "
        "(so steady load cannot block scale-in forever) and asks again only after a quiet "
        "period; 0: no limit.",
    ),
    Setting("LOG_LEVEL", "log_level", "info", _log_level, "debug, info, warning or error."),
)


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    upstream_url: str
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_keepalive: float
    upstream_max_connections: int
    allowed_paths: tuple[str, ...]
    forward_pooling_routes: bool
    require_audit_headers: bool
    max_request_body_bytes: int
    max_recorded_body_bytes: int
    extra_redacted_headers: tuple[str, ...]
    redact_name_patterns: tuple[str, ...]
    trust_edge_headers: bool
    request_body_timeout: float
    client_write_stall: float
    upstream_queue_timeout: float
    health_cache: float
    audit_bucket: str
    audit_prefix: str
    aws_region: str
    batch_max_records: int
    batch_max_bytes: int
    flush_interval: float
    digest_interval: float
    digest_kms_key_id: str
    digest_signing_key_file: str
    spool_dir: Path
    spool_max_bytes: int
    spool_full_policy: str
    fsync_interval_ms: float
    max_concurrent_uploads: int
    shutdown_grace: float
    shutdown_ship: float
    metrics_host: str
    metrics_port: int
    metrics_models: frozenset[str]
    health_max_spool_bytes: int
    health_max_ship_lag: float
    emf_interval: float
    service_name: str
    workers: int
    ecs_agent_uri: str
    task_protection: bool
    task_protection_minutes: int
    task_protection_renew: float
    task_protection_idle: float
    task_protection_max_hold: float
    log_level: str
    redacted_headers: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.digest_kms_key_id and self.digest_signing_key_file:
            raise ConfigError(
                "AUDIT_DIGEST_KMS_KEY_ID and AUDIT_DIGEST_SIGNING_KEY_FILE: set at most one"
            )
        self._check_task_protection()
        names = frozenset(DEFAULT_REDACTED_HEADERS) | frozenset(self.extra_redacted_headers)
        object.__setattr__(self, "redacted_headers", names)
        if self.forward_pooling_routes:
            extra = tuple(p for p in POOLING_PATHS if p not in self.allowed_paths)
            object.__setattr__(self, "allowed_paths", self.allowed_paths + extra)

    @property
    def protects_task(self) -> bool:
        """Task scale-in protection is on: asked for and reachable (on ECS)."""
        return self.task_protection and bool(self.ecs_agent_uri)

    def protection_renew_s(self) -> float:
        """Seconds between renewals (TASK_PROTECTION_RENEW_S, or half the expiry)."""
        return self.task_protection_renew or self.task_protection_minutes * 30.0

    def _check_task_protection(self) -> None:
        if not self.protects_task:
            return
        if self.workers > 1:
            # Each worker sees only its own requests: one going idle would remove the
            # protection another still needs. Until workers share one busy count, refuse.
            raise ConfigError(
                f"TASK_PROTECTION=true with WORKERS={self.workers}: task protection needs "
                "WORKERS=1 (workers do not share their in-flight count); set "
                "TASK_PROTECTION=false or WORKERS=1"
            )
        if self.task_protection_renew >= self.task_protection_minutes * 60:
            raise ConfigError(
                f"TASK_PROTECTION_RENEW_S={self.task_protection_renew:g}: must be shorter than "
                f"TASK_PROTECTION_MINUTES ({self.task_protection_minutes} min), or protection "
                "lapses between renewals"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.env, setting.default)
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from None
        return cls(**values)


def describe_settings() -> str:
    """The configuration table of the README, as Markdown."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)
