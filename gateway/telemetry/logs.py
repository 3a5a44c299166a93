"""The server's logs: every process of `serve` writes `core.logfmt`'s lines to stdout, and each
request leaves one access-log line when it answers (a long-poll when it returns)."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from core import logfmt
from core.logfmt import LogFormat, job_id, request_id, tenant_id, worker_id

access = logging.getLogger("orchestrator.access")

# Loggers whose info lines are noise for an operator.
QUIET = ("pgserver", "alembic.runtime.migration", "httpx")


def dict_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """The logging set-up as a dictConfig, which uvicorn applies in every process it starts."""
    return logfmt.dict_config(level, fmt, quiet=QUIET, exempt=(access.name,))


def configure(level: str, fmt: LogFormat) -> None:
    logging.config.dictConfig(dict_config(level, fmt))


def request_started(rid: str) -> None:
    """A request's context starts empty but for its id; auth and routes fill in the rest."""
    request_id.set(rid)
    tenant_id.set(None)
    job_id.set(None)
    worker_id.set(None)


def log_request(method: str, route: str, status: int, duration_s: float) -> None:
    ms = round(duration_s * 1000, 2)
    access.info(
        "%s %s %d %.1f ms",
        method,
        route,
        status,
        ms,
        extra={"method": method, "route": route, "status": status, "duration_ms": ms},
    )


__all__ = ["access", "configure", "dict_config", "job_id", "log_request", "request_started", "tenant_id", "worker_id"]
