"""Every failure as application/problem+json (RFC 9457); the one table of HTTP status codes."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from core import (
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    MalformedInput,
    NotFound,
    OrchestratorError,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from core.wire import Problem

log = logging.getLogger("orchestrator.gateway")

STATUS: dict[type[OrchestratorError], int] = {
    MalformedInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Gone: 410,
    Conflict: 409,
    InvalidInput: 422,
    UnsupportedMediaType: 415,
    Unavailable: 503,
}
TITLES = {
    400: "Malformed request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid field",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}
RETRY_AFTER_SECONDS = "1"

# What a statement against the database can raise besides a wrong statement's error: background
# loops catch these, log them, and try again later.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# SQLSTATEs that mean the database cannot serve now, not that the statement was wrong: connection
# exceptions (08), operator intervention (57P: shutting down, restarting, dropped), too many
# connections, a read-only server after a failover, a database that does not exist (yet).
_DOWN_PREFIXES = ("08", "57P")
_DOWN_STATES = frozenset({"53300", "25006", "3D000"})


def db_down(exc: BaseException) -> bool:
    """Whether `exc` means the database is unavailable (a 503), rather than a bug (a 500)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        # InternalClientError: a connection broken mid-query by a restart ("cannot switch to state").
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(_DOWN_PREFIXES) or state in _DOWN_STATES:
            return True
        # ALTER DATABASE ... ALLOW_CONNECTIONS false answers 55000 with this text.
        return state == "55000" and "not currently accepting connections" in str(exc)
    return False


def problem_body(status: int, detail: str, field: str | None = None) -> bytes:
    body = Problem(
        type=f"https://job-orchestrator.dev/problems/{status}",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        field=field,
    )
    return msgspec.json.encode(body)


def problem(
    status: int, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        content=problem_body(status, detail, field),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def _status_of(exc: OrchestratorError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _from_validation(exc: ValidationException) -> Response[Any]:
    """Litestar's decode errors: malformed JSON is a 400, a bad field a 422 naming it."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        if item.get("key") == "data":  # no body at all where one is required
            return problem(400, "the request body is empty: send a JSON object")
        message = str(item.get("message", ""))
        if "malformed" in message.lower() or "invalid json" in message.lower() or "truncated" in message.lower():
            return problem(400, f"the body is not valid JSON: {message}")
        field, message = field_of(message, item.get("key"))
        return problem(422, f"{field}: {message}" if field else message, field=field)
    return problem(400, exc.detail)


_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")


def field_of(message: str, key: object) -> tuple[str | None, str]:
    """The field a msgspec error names, as a path like `jobs[1].priority`, and the bare message."""
    path = None
    at = _AT.search(message)
    if at is not None:
        path = at.group("path") or None
        message = message[: at.start()]
    named = _NAMED.search(message)
    if named is not None:
        name = named.group("name")
        return (f"{path}.{name}" if path else name), message
    if path is None and key and key != "data":
        path = str(key)
    return path, message


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, OrchestratorError):
        status = _status_of(exc)
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
        return problem(status, exc.detail, field=exc.field, headers=headers)
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        return problem(exc.status_code, exc.detail, headers=exc.headers)
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        # What the request refers to went away meanwhile (a tenant being deleted, say).
        log.info("a reference broke in %s %s: %s", request.method, request.scope["path"], exc)
        return problem(404, "what this request refers to no longer exists")
    if isinstance(exc, asyncpg.UniqueViolationError):
        log.info("a unique value was taken in %s %s: %s", request.method, request.scope["path"], exc)
        return problem(409, "a value that must be unique is taken")
    if isinstance(exc, asyncpg.CheckViolationError):
        # A value the database's own rules refuse: input the validation let through.
        log.info("a value broke a rule of the database in %s %s: %s", request.method, request.scope["path"], exc)
        return problem(422, "a value in the request is not allowed here")
    if isinstance(exc, asyncpg.DataError):
        # Input that passed validation but that PostgreSQL cannot store. Its text names server
        # internals, so it goes to the log, not to the client.
        log.info("a value could not be stored in %s %s: %s", request.method, request.scope["path"], exc)
        return problem(
            422, "a value cannot be stored: a string holds \\u0000, or a number or time is out of the stored range"
        )
    if db_down(exc):
        log.warning("database unreachable during %s %s: %r", request.method, request.scope["path"], exc)
        return problem(503, "the database is unreachable; retry shortly", headers={"Retry-After": RETRY_AFTER_SECONDS})
    log.exception("unhandled error in %s %s", request.method, request.scope["path"])
    return problem(500, "internal error")
