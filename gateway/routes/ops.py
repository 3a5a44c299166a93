"""Unauthenticated operations routes: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import hmac
import weakref
from typing import Any

from litestar import Request, Response, get

import db
from core import Unauthenticated

from ..auth import runtime_of
from ..errors import db_down
from ..runtime import Runtime
from ..services.metrics_snapshot import render_metrics
from . import _openapi


@get("/healthz", tags=["operations"], summary="200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["operations"],
    summary="200 when the database and the LISTEN connection work",
    responses=_openapi.NOT_READY,
)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    rt = runtime_of(request)
    database, listen = await _readiness(rt)
    failing = rt.failing_services()
    ok = database and listen and not failing
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "database": database, "listen": listen}
    if failing:
        body["failing_services"] = failing
    return Response(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "1"})


# /readyz needs no credentials, so its database check (a pool connection and a NOTIFY round trip)
# is shared: concurrent requests wait for one check, and its answer serves for a second unless
# the LISTEN connection changed state meanwhile.
READY_CACHE_SECONDS = 1.0
_checks: weakref.WeakKeyDictionary[Runtime, tuple[float, bool, asyncio.Task[tuple[bool, bool]]]] = (
    weakref.WeakKeyDictionary()
)


async def _readiness(rt: Runtime) -> tuple[bool, bool]:
    loop = asyncio.get_running_loop()
    cached = _checks.get(rt)
    if cached is not None:
        at, listening, task = cached
        if not task.done() or (loop.time() - at < READY_CACHE_SECONDS and listening == rt.notifier.listening):
            return await asyncio.shield(task)
    task = loop.create_task(_check(rt))
    _checks[rt] = (loop.time(), rt.notifier.listening, task)
    return await asyncio.shield(task)


async def _check(rt: Runtime) -> tuple[bool, bool]:
    database = True
    try:
        async with rt.pool.acquire(timeout=2) as conn:
            await db.ping(conn)
    except Exception as exc:
        if not db_down(exc):
            raise
        database = False
    listen = database and (not rt.settings.notifier_enabled or await rt.notifier.probe())
    return database, listen


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus text exposition",
    media_type="text/plain; version=0.0.4",
    security=_openapi.METRICS_SECURITY,
    responses=_openapi.problems(
        {401: "ORCH_METRICS_TOKEN is set, and the request does not carry it as a bearer token."}
    ),
)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    rt = runtime_of(request)
    expected = rt.settings.metrics_token
    if expected is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthenticated("Authorization: Bearer <ORCH_METRICS_TOKEN> is required for /metrics")
    return render_metrics(rt)
