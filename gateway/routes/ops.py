"""Unauthenticated operations routes: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

import db

from ..auth import runtime_of
from ..errors import db_down
from ..services.metrics_snapshot import render_metrics


@get("/healthz", tags=["operations"], summary="200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["operations"], summary="200 when the database and the LISTEN connection work")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    rt = runtime_of(request)
    database = True
    try:
        async with rt.pool.acquire(timeout=2) as conn:
            await db.ping(conn)
    except Exception as exc:
        if not db_down(exc):
            raise
        database = False
    listen = database and (not rt.settings.notifier_enabled or await rt.notifier.probe())
    failing = rt.failing_services()
    ok = database and listen and not failing
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "database": database, "listen": listen}
    if failing:
        body["failing_services"] = failing
    return Response(
        body,
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "1"},
    )


@get("/metrics", tags=["operations"], summary="Prometheus text exposition", media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    return render_metrics(runtime_of(request))
