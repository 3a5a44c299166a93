"""Cron schedules: the tenant routes under /v1/schedules (the firer is `services.scheduler`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody

import db
from core import Conflict, InvalidInput, NotFound
from core.cron import CronSpec, next_fire, parse_cron, parse_timezone
from core.wire import Schedule, ScheduleCreate, ScheduleList, SchedulePatch

from ..auth import runtime_of, signed, tenant_of
from ..services import scheduler
from . import _openapi
from ._body import Body


def _cron(expr: str) -> CronSpec:
    try:
        return parse_cron(expr)
    except ValueError as exc:
        raise InvalidInput(f"cron: invalid expression {expr!r}: {exc}", field="cron") from None


def _timezone(name: str) -> ZoneInfo:
    try:
        return parse_timezone(name)
    except ValueError as exc:
        raise InvalidInput(f"timezone: {exc}", field="timezone") from None


class SchedulesController(Controller):
    path = "/v1/schedules"
    guards = [signed]
    tags = ["schedules"]

    @post(
        "/",
        status_code=201,
        summary="Create a cron schedule",
        dto=Body[ScheduleCreate],
        return_dto=None,
        responses=_openapi.problems({409: "A schedule of this name exists."}),
    )
    async def create_schedule(self, request: Request[Any, Any, Any], data: JSONBody[ScheduleCreate]) -> Schedule:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        spec, tz = _cron(data.cron), _timezone(data.timezone)
        async with rt.pool.acquire() as conn, conn.transaction():
            now = await db.schedule_clock(conn)
            values = db.ScheduleValues(
                name=data.name,
                cron=spec.expr,
                timezone=data.timezone,
                queue=data.queue,
                kind=data.kind,
                payload=data.payload,
                priority=data.priority,
                max_attempts=data.max_attempts,
                paused=data.paused,
                next_fire_at=next_fire(spec, now, tz),
            )
            schedule = await db.schedule_insert(conn, tenant_id, values)
        if schedule is None:
            raise Conflict(f"schedule {data.name} exists")
        scheduler.wake(rt)
        return schedule

    @get("/", summary="List the tenant's schedules")
    async def list_schedules(self, request: Request[Any, Any, Any]) -> ScheduleList:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            return ScheduleList(schedules=await db.schedule_list(conn, tenant_id))

    @get("/{name:str}", summary="Get a schedule")
    async def get_schedule(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Schedule:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            schedule = await db.schedule_get(conn, tenant_id, name)
        if schedule is None:
            raise NotFound(f"no schedule {name}")
        return schedule

    @patch(
        "/{name:str}",
        summary="Change a schedule; pause or resume it",
        dto=Body[SchedulePatch],
        return_dto=None,
        responses=_openapi.problems({409: "A schedule of the new name exists."}),
    )
    async def patch_schedule(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[SchedulePatch]
    ) -> Schedule:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        spec = _cron(data.cron) if data.cron is not None else None
        tz = _timezone(data.timezone) if data.timezone is not None else None
        async with rt.pool.acquire() as conn, conn.transaction():
            cur = await db.schedule_get(conn, tenant_id, name, for_update=True)
            if cur is None:
                raise NotFound(f"no schedule {name}")
            paused = cur.paused if data.paused is None else data.paused
            next_fire_at: datetime = cur.next_fire_at
            # A new timing, or a resume, counts from now: fires missed while paused stay missed.
            if spec is not None or tz is not None or (cur.paused and not paused):
                spec = spec or _cron(cur.cron)
                tz = tz or _timezone(cur.timezone)
                next_fire_at = next_fire(spec, await db.schedule_clock(conn), tz)
            values = db.ScheduleValues(
                name=cur.name if data.name is None else data.name,
                cron=cur.cron if spec is None else spec.expr,
                timezone=cur.timezone if data.timezone is None else data.timezone,
                queue=cur.queue if data.queue is None else data.queue,
                kind=cur.kind if data.kind is None else data.kind,
                payload=cur.payload if data.payload is None else data.payload,
                priority=cur.priority if data.priority is None else data.priority,
                max_attempts=(
                    cur.max_attempts if isinstance(data.max_attempts, msgspec.UnsetType) else data.max_attempts
                ),
                paused=paused,
                next_fire_at=next_fire_at,
            )
            schedule = await db.schedule_update(conn, tenant_id, name, values)
        if schedule is None:  # deleted by a concurrent request
            raise NotFound(f"no schedule {name}")
        scheduler.wake(rt)
        return schedule

    @delete("/{name:str}", status_code=204, summary="Delete a schedule")
    async def delete_schedule(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[None]:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            if not await db.schedule_delete(conn, tenant_id, name):
                raise NotFound(f"no schedule {name}")
        return Response(None, status_code=204)
