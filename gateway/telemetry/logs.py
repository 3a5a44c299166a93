"""Structured JSON logs: one object per line, with the request, tenant and job they are about.

Payloads, results and secrets are never put into a log record; only ids, states and counts.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_base_factory = logging.getLogRecordFactory()


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Taken when the record is made, inside the request, not when a handler formats it later.
    record = _base_factory(*args, **kwargs)
    rid, tid = request_id.get(), tenant_id.get()
    if rid is not None:
        record.request_id = rid
    if tid is not None:
        record.tenant_id = tid
    return record


logging.setLogRecordFactory(_record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # request_id, tenant_id, and the fields given with `extra=` (job_id, count, ...).
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def dict_config(level: str, *, json_lines: bool) -> dict[str, Any]:
    """The same set-up as a logging dictConfig, which uvicorn applies in each worker process."""
    formatter: dict[str, Any] = (
        {"()": "gateway.telemetry.logs.JsonFormatter"}
        if json_lines
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "pgserver": {"level": "WARNING"},
        },
    }


def configure(level: str = "info", *, json_lines: bool = True) -> None:
    """Route every logger (ours, uvicorn's, alembic's) through one handler on stderr."""
    logging.config.dictConfig(dict_config(level, json_lines=json_lines))
