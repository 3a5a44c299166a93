"""Path and query values shared by the routes: one strict reading of each.

A value that cannot name anything answers 404, exactly as for a resource of another tenant.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

import db
from core import InvalidInput, NotFound, parse_uint
from core.wire import QUEUE_RE

from ..telemetry import logs


def job_id(text: str) -> int:
    value = parse_uint(text, maximum=db.MAX_JOB_ID)
    if value is None:
        raise NotFound("no such job")
    logs.job_id.set(text)  # the request's log lines are about this job
    return value


def webhook_id(text: str) -> int:
    value = parse_uint(text, maximum=db.MAX_JOB_ID)
    if value is None:
        raise NotFound("no such webhook")
    return value


def name(text: str, what: str) -> str:
    """A queue or consumer name from a path."""
    if not QUEUE_RE.match(text):
        raise NotFound(f"no {what} {text!r}")
    return text


def id_cursor(text: str | None, field: str) -> int | None:
    """A listing's `after` cursor (a job id handed out as `next`)."""
    if text is None:
        return None
    value = parse_uint(text, maximum=db.MAX_JOB_ID)
    if value is None:
        raise InvalidInput(f"{field} must be a cursor returned as next", field=field)
    return value


# Query parameters that are counts: ASCII digits only, once. Litestar would read `1e3` or
# ` 12` as numbers; the range checks stay on the parameters themselves.
_COUNT_PARAMS = ("wait_ms", "limit")
_COUNT = re.compile(r"[0-9]{1,9}")


async def strict_query(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard: refuse a count query parameter that is not plain decimal digits, or given twice."""
    params = connection.query_params
    for name in _COUNT_PARAMS:
        values = params.getall(name, [])
        if len(values) > 1:
            raise InvalidInput(f"{name}: given more than once", field=name)
        if values and _COUNT.fullmatch(values[0]) is None:
            raise InvalidInput(f"{name}: must be a whole number in decimal digits", field=name)
