"""The Litestar application: the one composition root of the server side."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

import db
from core import Settings, load_settings

from . import errors
from .leasing import Leaser
from .routes import ROUTES
from .routes._openapi import openapi_config
from .runtime import Runtime, begin_drain_all
from .services import services_for
from .telemetry import logs

log = logging.getLogger("orchestrator.gateway")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class SchemaMismatch(RuntimeError):
    pass


def _drain_on_shutdown_signals() -> None:
    """Have SIGTERM and SIGINT answer every parked long-poll before the server stops.

    The ASGI server owns these signals and, on one, waits for open responses before it runs the
    lifespan shutdown; a parked long-poll would hold it up to the graceful-shutdown timeout and
    then be cut off. So the handler it installed is wrapped: drain first, then its own. It puts
    its original handlers back when it stops, which removes this wrapper with them.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            begin_drain_all()
            previous(signum, frame)

        signal.signal(sig, handler)


def _timing(app: ASGIApp) -> ASGIApp:
    """Middleware giving each request an id (X-Request-Id, taken from the caller when it sends a
    sane one) for its log lines, and recording its duration by route template and status."""

    async def timed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        logs.request_started(rid)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        rt: Runtime | None = getattr(scope["litestar_app"].state, "runtime", None)
        try:
            if "\x00" in scope["path"]:
                # No id or name holds a NUL (and PostgreSQL's text cannot): it names nothing.
                body = errors.problem_body(404, "no such resource")
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/problem+json"), (b"content-length", b"%d" % len(body))],
                }
                await send_wrapper(start)
                await send_wrapper({"type": "http.response.body", "body": body, "more_body": False})
            elif rt is None or not rt.tracing.enabled:
                await app(scope, receive, send_wrapper)
            else:
                await rt.tracing.serve(app, scope, receive, send_wrapper)
        finally:
            if rt is not None:
                took = time.perf_counter() - t0
                route = scope.get("path_template") or "unmatched"
                method = scope.get("method", "")
                rt.metrics.http_duration.record(took, {"method": method, "route": route, "status": str(status)})
                if rt.settings.access_log:
                    logs.log_request(method, route, status, took)

    return timed


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app; settings default to this process's environment."""
    cfg = settings if settings is not None else load_settings(os.environ)
    if cfg.database_url is None:
        raise ValueError("DATABASE_URL is not set: `orchestrator serve` sets it, or starts an embedded database")
    dsn = cfg.database_url

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await db.create_pool(
            dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, statement_cache=cfg.db_statement_cache
        )
        try:
            async with pool.acquire() as conn:
                problem = db.schema_status(await db.current_revision(conn))
            if problem is not None:
                raise SchemaMismatch(problem)
            rt = Runtime(cfg, pool, dsn)
            leaser = Leaser(rt)
            app.state.runtime = rt
            app.state.leaser = leaser
            await rt.start(services_for(cfg))
            _drain_on_shutdown_signals()
            try:
                yield
            finally:
                await leaser.close()
                await rt.stop()
        finally:
            await pool.close()

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        exception_handlers={Exception: errors.handle},
        request_max_body_size=cfg.max_body_bytes,
        openapi_config=openapi_config(
            title="Job Orchestrator",
            version="1",
            description="Multi-tenant job orchestrator on PostgreSQL: signed workers, fenced leases, ordered events.",
        ),
        middleware=[_timing],
        # The process's logging is set up once, by `serve` (or whoever runs the app), not by Litestar.
        logging_config=None,
        debug=False,
    )
