"""Settings: one frozen object, built once at the edge of a process from its environment."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

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
    nonce_window_seconds: int = 300
    retry_base_ms: int = 1000
    retry_cap_ms: int = 3_600_000
    default_max_attempts: int = 5
    max_lease_seconds: int = 3600
    notifier_enabled: bool = True


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
        nonce_window_seconds=d.nonce_window_seconds,
        retry_base_ms=_int(env, "RETRY_BASE_MS", d.retry_base_ms),
        retry_cap_ms=_int(env, "RETRY_CAP_MS", d.retry_cap_ms),
        default_max_attempts=_int(env, "DEFAULT_MAX_ATTEMPTS", d.default_max_attempts),
        max_lease_seconds=d.max_lease_seconds,
        notifier_enabled=env.get(PREFIX + "NOTIFIER", "on").lower() not in ("off", "0", "false"),
    )
