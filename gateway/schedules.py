"""Cron schedules: the tenant routes under /v1/schedules, and the loop that fires them.

Every gateway process runs the loop. Each due time is claimed by a unique (schedule, fire
time) row in the database, so the processes need no leader and no lock between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody

import db
from core import Conflict, InvalidInput, NotFound
from core.cron import CronSpec, next_fire, parse_cron, parse_timezone
from core.wire import Schedule, ScheduleCreate, ScheduleList, SchedulePatch

from .auth import runtime_of, signed, tenant_of

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

FIRE_BATCH = 100
# The loop sleeps until the earliest due schedule, but never longer than this, so schedules
# created or resumed through another gateway are picked up promptly.
MAX_SLEEP_SECONDS = 1.0
# A due schedule still locked by another gateway is retried after this, not in a busy loop.
OVERDUE_RETRY_SECONDS = 0.01
PRUNE_EVERY_SECONDS = 600.0
KEEP_FIRES_SECONDS = 7 * 86_400.0
PRUNE_BATCH = 10_000

# Each process's firing loop waits on its event, so a schedule created or changed through this
# process is timed at once instead of after the loop's next capped sleep.
_wakeups: weakref.WeakKeyDictionary[Runtime, asyncio.Event] = weakref.WeakKeyDictionary()


def _wake(rt: Runtime) -> None:
    event = _wakeups.get(rt)
    if event is not None:
        event.set()


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

    @post("/", status_code=201, summary="Create a cron schedule")
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
        _wake(rt)
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

    @patch("/{name:str}", summary="Change a schedule; pause or resume it")
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
        assert schedule is not None  # locked above
        _wake(rt)
        return schedule

    @delete("/{name:str}", status_code=204, summary="Delete a schedule")
    async def delete_schedule(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[None]:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            if not await db.schedule_delete(conn, tenant_id, name):
                raise NotFound(f"no schedule {name}")
        return Response(None, status_code=204)


# --- firing --------------------------------------------------------------------------------


async def fire_due(rt: Runtime) -> float | None:
    """Fire every due schedule, one transaction per batch; seconds until the next is due."""
    async with rt.pool.acquire() as conn:
        while True:
            async with conn.transaction():
                batch = await db.schedule_fire_due(
                    conn, limit=FIRE_BATCH, default_max_attempts=rt.settings.default_max_attempts
                )
            for f in batch.fired:
                rt.metrics.schedule_fires.add(1, rt.metrics.labels(f.tenant_id, f.queue))
            for b in batch.broken:
                log.error("schedule %s of tenant %s cannot fire: %s", b.schedule, b.tenant_id, b.error)
            if batch.due < FIRE_BATCH:
                break
        return await db.schedule_next_due_in(conn)


async def prune_fires(rt: Runtime) -> int:
    """Delete fire records older than a week, a batch per statement; every gateway may at once."""
    total = 0
    async with rt.pool.acquire() as conn:
        while True:
            n = await db.schedule_fire_prune(conn, older_than_seconds=KEEP_FIRES_SECONDS, limit=PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH:
                return total


async def run_schedules(rt: Runtime) -> None:
    """Fire due schedules until cancelled, sleeping until the next one is due."""
    loop = asyncio.get_running_loop()
    next_prune = loop.time() + PRUNE_EVERY_SECONDS
    wake = _wakeups.setdefault(rt, asyncio.Event())
    while True:
        wake.clear()
        try:
            next_in = await fire_due(rt)
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_EVERY_SECONDS
                await prune_fires(rt)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("firing schedules failed: %s", exc)
            next_in = MAX_SLEEP_SECONDS
        except Exception:
            # The loop must outlive anything one tick runs into; it tries again on the next.
            log.exception("firing schedules failed")
            next_in = MAX_SLEEP_SECONDS
        if next_in is None:
            wait = MAX_SLEEP_SECONDS
        elif next_in <= 0:
            wait = OVERDUE_RETRY_SECONDS
        else:
            wait = min(next_in, MAX_SLEEP_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
