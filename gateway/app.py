"""The Litestar application: the one composition root of the server side."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

import db
from core import Settings, load_settings

from . import errors, logs
from .admin import AdminController
from .events import ConsumersController, EventsController
from .jobs import JobsController, RetryPolicyController
from .leasing import Leaser
from .ops import healthz, metrics, readyz
from .queues import AdminQueuesController, QueuesController
from .runtime import Runtime
from .schedules import SchedulesController
from .webhooks import WebhooksController
from .workers import WorkersController

log = logging.getLogger("orchestrator.gateway")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SchemaMismatch(RuntimeError):
    pass


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
        logs.request_id.set(rid)
        logs.tenant_id.set(None)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        rt: Runtime | None = getattr(scope["litestar_app"].state, "runtime", None)
        try:
            if rt is None or not rt.tracing.enabled:
                await app(scope, receive, send_wrapper)
            else:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                with rt.tracing.request_span(f"{scope.get('method', '')} {scope.get('path_template', '')}", headers):
                    await app(scope, receive, send_wrapper)
        finally:
            if rt is not None:
                route = scope.get("path_template") or "unmatched"
                labels = {"method": scope.get("method", ""), "route": route, "status": str(status)}
                rt.metrics.http_duration.record(time.perf_counter() - t0, labels)

    return timed


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app; settings default to this process's environment."""
    cfg = settings if settings is not None else load_settings(os.environ)
    if cfg.database_url is None:
        raise ValueError("DATABASE_URL is not set: `orchestrator serve` sets it, or starts an embedded database")
    dsn = cfg.database_url

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await db.create_pool(dsn, min_size=cfg.pool_min, max_size=cfg.pool_max)
        try:
            async with pool.acquire() as conn:
                problem = db.schema_status(await db.current_revision(conn))
            if problem is not None:
                raise SchemaMismatch(problem)
            rt = Runtime(cfg, pool, dsn)
            app.state.runtime = rt
            app.state.leaser = Leaser(rt)
            await rt.start()
            try:
                yield
            finally:
                await rt.stop()
        finally:
            await pool.close()

    return Litestar(
        route_handlers=[
            JobsController,
            RetryPolicyController,
            SchedulesController,
            WorkersController,
            EventsController,
            ConsumersController,
            WebhooksController,
            AdminController,
            QueuesController,
            AdminQueuesController,
            healthz,
            readyz,
            metrics,
        ],
        lifespan=[lifespan],
        exception_handlers={Exception: errors.handle},
        request_max_body_size=cfg.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Job Orchestrator",
            version="1",
            description="Multi-tenant job orchestrator on PostgreSQL: signed workers, fenced leases, ordered events.",
        ),
        middleware=[_timing],
        debug=False,
    )
