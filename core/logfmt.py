"""Log lines for machines and for people, the same for the server and the worker side.

JSON: one object per line with `ts`, `level`, `logger`, `msg`, the ids of what the line is about
(`request_id`, `tenant_id`, `job_id`, `worker_id`, taken from context variables when the record
is made) and the fields given with `extra=`; an exception is one `exc` field. Text: one line per
record, the same ids appended as `key=value`. Payloads, results and secrets never go into a
record, only ids, states and counts.

A record that repeats (the same logger, message template and exception type) more than
`BURST` times in `WINDOW_SECONDS` is summarised instead of written: the next window starts with
one line saying how many were left out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
worker_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("worker_id", default=None)
_CONTEXT = (("request_id", request_id), ("tenant_id", tenant_id), ("job_id", job_id), ("worker_id", worker_id))

# Attributes every LogRecord has, and those uvicorn adds for its coloured console output.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}
_base_factory = logging.getLogRecordFactory()

BURST = 5
WINDOW_SECONDS = 10.0


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Taken when the record is made, inside the request, not when a handler formats it later;
    # kept apart from the record's attributes so that `extra=` may name the same fields.
    record = _base_factory(*args, **kwargs)
    record._context = {name: value for name, var in _CONTEXT if (value := var.get()) is not None}
    return record


logging.setLogRecordFactory(_record)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context ids, then its `extra=` fields (which win)."""
    out: dict[str, Any] = dict(getattr(record, "_context", None) or {})
    out.update((k, v) for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_"))
    return out


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if extra:
            line += f"  [{extra}]"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class Summarise(logging.Filter):
    """Lets the first BURST of a repeated record through per window, then counts the rest."""

    def __init__(self, exempt: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__()
        self._exempt = frozenset(exempt)  # loggers whose every line counts, like an access log
        self._window_start = 0.0
        self._seen: dict[tuple[str, object, str], int] = {}
        self._examples: dict[tuple[str, object, str], logging.LogRecord] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self._exempt:
            return True
        if record.created - self._window_start >= WINDOW_SECONDS:
            summaries = self._summaries(record.created)
            self._seen.clear()
            self._examples.clear()
            self._window_start = record.created
            for summary in summaries:  # through the handlers again, now in the new window
                for handler in logging.getLogger().handlers:
                    if summary.levelno >= handler.level:
                        handler.handle(summary)
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.msg, exc)
        n = self._seen.get(key, 0) + 1
        self._seen[key] = n
        if n > BURST:
            self._examples[key] = record
            return False
        return True

    def _summaries(self, now: float) -> list[logging.LogRecord]:
        out = []
        for key, example in self._examples.items():
            summary = logging.LogRecord(
                example.name,
                example.levelno,
                example.pathname,
                example.lineno,
                "%d more like this in %.0f s were left out: %s",
                (self._seen[key] - BURST, WINDOW_SECONDS, example.getMessage()),
                None,
            )
            summary.created = now
            out.append(summary)
        return out


def default_format(stream: TextIO | None = None) -> LogFormat:
    """JSON unless the output is a terminal someone reads."""
    s = sys.stdout if stream is None else stream
    return "text" if s.isatty() else "json"


def dict_config(
    level: str, fmt: LogFormat, *, quiet: tuple[str, ...] = (), exempt: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One handler on stdout for every logger (ours, uvicorn's, alembic's, asyncpg's), as a
    logging dictConfig, which uvicorn applies again in each worker process it starts."""
    formatter = "core.logfmt.JsonFormatter" if fmt == "json" else "core.logfmt.TextFormatter"
    loggers: dict[str, Any] = {name: {"level": "WARNING"} for name in quiet}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        loggers[name] = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "filters": {"summarise": {"()": "core.logfmt.Summarise", "exempt": list(exempt)}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["summarise"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": loggers,
    }
