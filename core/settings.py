"""Settings: one frozen object, built once at the edge of a process from its environment."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from .logfmt import LogFormat
from .wire import MAX_RETAIN_SECONDS

PREFIX = "ORCH_"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    database_url: str | None = None
    admin_token: str | None = None
    data_dir: str = ".orchestrator"
    max_body_bytes: int = 1024 * 1024
    pool_min: int = 2
    pool_max: int = 20
    # Backstop for lost notifications; the LISTEN path does the real waking.
    safety_poll_seconds: float = 5.0
    reap_interval_seconds: float = 2.0
    retry_base_ms: int = 1000
    retry_cap_ms: int = 3_600_000
    default_max_attempts: int = 5
    max_lease_seconds: int = 3600
    notifier_enabled: bool = True
    # Events older than this (by the time their transaction started) are pruned.
    event_retention_seconds: int = 7 * 86_400
    event_prune_interval_seconds: float = 60.0
    # SSE comment lines keep idle streams (and the proxies in front of them) open.
    event_stream_keepalive_seconds: float = 15.0
    # Webhooks: failed deliveries back off exponentially (base doubling up to cap) and the
    # endpoint is parked after webhook_max_attempts failures of one event.
    webhook_max_attempts: int = 8
    webhook_retry_base_ms: int = 10_000
    webhook_retry_cap_ms: int = 3_600_000
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency: int = 4
    # Backstop for endpoints changed through another gateway; notifications do the real waking.
    webhook_poll_seconds: float = 5.0
    # Where clients reach this gateway; webhooks may not point at it.
    public_url: str | None = None
    # Host names, IP addresses and CIDR networks webhooks may reach although they are loopback,
    # private, link-local or otherwise internal (refused by default).
    webhook_allow_hosts: tuple[str, ...] = ()
    # Observability: drop the tenant label where tenants are too many to be series; how often
    # the database-derived gauges are refreshed; where `serve --workers N` processes share
    # their metrics; JSON or plain text logs.
    metrics_tenant_label: bool = True
    stats_interval_seconds: float = 10.0
    metrics_dir: str | None = None
    # When set, /metrics answers only requests bearing it (Prometheus: `authorization: credentials`).
    metrics_token: str | None = None
    log_format: LogFormat | None = None  # None: json unless stdout is a terminal
    access_log: bool = True
    traces: str | None = None  # a span exporter: console, or otlp
    # Finished jobs are deleted this long after they finished (None: kept for ever), unless a
    # tenant's or queue's policy says otherwise; passes run at least this often.
    retain_succeeded_seconds: int | None = 86_400
    retain_cancelled_seconds: int | None = 7 * 86_400
    retain_dead_seconds: int | None = 30 * 86_400
    job_prune_interval_seconds: float = 10.0
    # Where the LISTEN connection goes (None: database_url). Behind a transaction-mode pooler
    # such as PgBouncer it must reach PostgreSQL directly: LISTEN does not survive the pooling.
    listen_url: str | None = None
    # asyncpg's cache of named prepared statements; off behind a pooler that cannot keep them
    # (PgBouncer in transaction mode before 1.21, or without max_prepared_statements).
    db_statement_cache: bool = True


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be a number, got {raw!r}") from None


def _retention(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """Seconds, or `forever` for None; unset or empty: the default. `none` is refused: it could
    mean "keep none" as well as "no limit"."""
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if text.lower() == "forever":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_RETAIN_SECONDS:
        raise ValueError(
            f"{PREFIX}{name} must be whole seconds from 0 to {MAX_RETAIN_SECONDS}, or forever; got {raw!r}"
        )
    return int(text)


def _log_format(env: Mapping[str, str]) -> LogFormat | None:
    raw = env.get(PREFIX + "LOG_FORMAT", "").strip().lower()
    if raw == "json":
        return "json"
    if raw == "text":
        return "text"
    if raw:
        raise ValueError(f"{PREFIX}LOG_FORMAT must be json or text, got {raw!r}")
    return None


def _flag(env: Mapping[str, str], name: str) -> bool:
    """On unless set to off, 0 or false."""
    return env.get(PREFIX + name, "on").lower() not in ("off", "0", "false")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping (the caller passes `os.environ`)."""
    d = Settings()
    return Settings(
        database_url=env.get("DATABASE_URL") or None,
        admin_token=env.get(PREFIX + "ADMIN_TOKEN") or None,
        data_dir=env.get(PREFIX + "DATA_DIR") or d.data_dir,
        max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes),
        pool_min=_int(env, "POOL_MIN", d.pool_min),
        pool_max=_int(env, "POOL_MAX", d.pool_max),
        safety_poll_seconds=_float(env, "SAFETY_POLL_SECONDS", d.safety_poll_seconds),
        reap_interval_seconds=_float(env, "REAP_INTERVAL_SECONDS", d.reap_interval_seconds),
        retry_base_ms=_int(env, "RETRY_BASE_MS", d.retry_base_ms),
        retry_cap_ms=_int(env, "RETRY_CAP_MS", d.retry_cap_ms),
        default_max_attempts=_int(env, "DEFAULT_MAX_ATTEMPTS", d.default_max_attempts),
        max_lease_seconds=d.max_lease_seconds,
        notifier_enabled=_flag(env, "NOTIFIER"),
        event_retention_seconds=_int(env, "EVENT_RETENTION_SECONDS", d.event_retention_seconds),
        event_prune_interval_seconds=_float(env, "EVENT_PRUNE_INTERVAL_SECONDS", d.event_prune_interval_seconds),
        event_stream_keepalive_seconds=_float(env, "EVENT_STREAM_KEEPALIVE_SECONDS", d.event_stream_keepalive_seconds),
        webhook_max_attempts=_int(env, "WEBHOOK_MAX_ATTEMPTS", d.webhook_max_attempts),
        webhook_retry_base_ms=_int(env, "WEBHOOK_RETRY_BASE_MS", d.webhook_retry_base_ms),
        webhook_retry_cap_ms=_int(env, "WEBHOOK_RETRY_CAP_MS", d.webhook_retry_cap_ms),
        webhook_timeout_seconds=_float(env, "WEBHOOK_TIMEOUT_SECONDS", d.webhook_timeout_seconds),
        webhook_concurrency=_int(env, "WEBHOOK_CONCURRENCY", d.webhook_concurrency),
        webhook_poll_seconds=_float(env, "WEBHOOK_POLL_SECONDS", d.webhook_poll_seconds),
        public_url=env.get(PREFIX + "PUBLIC_URL") or None,
        webhook_allow_hosts=tuple(
            h.strip() for h in env.get(PREFIX + "WEBHOOK_ALLOW_HOSTS", "").split(",") if h.strip()
        ),
        metrics_tenant_label=_flag(env, "METRICS_TENANT_LABEL"),
        stats_interval_seconds=_float(env, "STATS_INTERVAL_SECONDS", d.stats_interval_seconds),
        metrics_dir=env.get(PREFIX + "METRICS_DIR") or None,
        metrics_token=env.get(PREFIX + "METRICS_TOKEN") or None,
        log_format=_log_format(env),
        access_log=_flag(env, "ACCESS_LOG"),
        traces=env.get(PREFIX + "TRACES") or None,
        retain_succeeded_seconds=_retention(env, "RETAIN_SUCCEEDED_SECONDS", d.retain_succeeded_seconds),
        retain_cancelled_seconds=_retention(env, "RETAIN_CANCELLED_SECONDS", d.retain_cancelled_seconds),
        retain_dead_seconds=_retention(env, "RETAIN_DEAD_SECONDS", d.retain_dead_seconds),
        job_prune_interval_seconds=_float(env, "JOB_PRUNE_INTERVAL_SECONDS", d.job_prune_interval_seconds),
        listen_url=env.get(PREFIX + "LISTEN_URL") or None,
        db_statement_cache=_flag(env, "DB_STATEMENT_CACHE"),
    )
