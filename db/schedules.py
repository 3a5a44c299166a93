"""Cron schedule commands, and firing the due ones.

Fire times are computed in Python (core.cron) against the database clock and passed into SQL.
Each (schedule, due time) pair is claimed by inserting it into schedule_fires: the primary key,
not a lock, is what makes a due time fire exactly once across every gateway process.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from core import Conflict
from core.cron import next_fire, parse_cron, parse_timezone, prev_fire
from core.wire import Schedule

from ._queries import sql
from ._types import Conn
from .jobs import NewJob, job_insert_many

_CLOCK = sql("schedule_clock")
_INSERT = sql("schedule_insert")
_GET = sql("schedule_get")
_GET_FOR_UPDATE = sql("schedule_get_for_update")
_LIST = sql("schedule_list")
_UPDATE = sql("schedule_update")
_DELETE = sql("schedule_delete")
_DUE = sql("schedule_due")
_FIRE_INSERT_MANY = sql("schedule_fire_insert_many")
_FIRE_SET_JOBS = sql("schedule_fire_set_jobs")
_ADVANCE_MANY = sql("schedule_advance_many")
_NEXT_DUE = sql("schedule_next_due_in")
_FIRE_PRUNE = sql("schedule_fire_prune")

# A schedule whose stored expression or zone no longer parses is retried this much later.
BROKEN_RETRY = timedelta(hours=1)


class ScheduleValues(msgspec.Struct, frozen=True, kw_only=True):
    """Every stored field of a schedule, as a create or an update writes it."""

    name: str
    cron: str
    timezone: str
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    max_attempts: int | None
    paused: bool
    next_fire_at: datetime


def schedule_from_row(r: asyncpg.Record) -> Schedule:
    return Schedule(
        name=r["name"],
        tenant_id=r["tenant_id"],
        cron=r["cron"],
        timezone=r["timezone"],
        queue=r["queue"],
        kind=r["kind"],
        payload=r["payload"],
        priority=r["priority"],
        max_attempts=r["max_attempts"],
        paused=r["paused"],
        next_fire_at=r["next_fire_at"],
        last_fired_at=r["last_fired_at"],
        created_at=r["created_at"],
    )


def _args(v: ScheduleValues) -> tuple[Any, ...]:
    return (
        v.name,
        v.cron,
        v.timezone,
        v.queue,
        v.kind,
        v.payload,
        v.priority,
        v.max_attempts,
        v.paused,
        v.next_fire_at,
    )


async def schedule_clock(conn: Conn) -> datetime:
    """The database's now(): the time of the current transaction."""
    now: datetime = await conn.fetchval(_CLOCK)
    return now


async def schedule_insert(conn: Conn, tenant_id: str, values: ScheduleValues) -> Schedule | None:
    """The new schedule, or None when the tenant has one of that name."""
    row = await conn.fetchrow(_INSERT, tenant_id, *_args(values))
    return None if row is None else schedule_from_row(row)


async def schedule_get(conn: Conn, tenant_id: str, name: str, *, for_update: bool = False) -> Schedule | None:
    row = await conn.fetchrow(_GET_FOR_UPDATE if for_update else _GET, tenant_id, name)
    return None if row is None else schedule_from_row(row)


async def schedule_list(conn: Conn, tenant_id: str) -> list[Schedule]:
    return [schedule_from_row(r) for r in await conn.fetch(_LIST, tenant_id)]


async def schedule_update(conn: Conn, tenant_id: str, name: str, values: ScheduleValues) -> Schedule | None:
    """Overwrite the schedule `name` (renaming it when values.name differs); None when absent."""
    try:
        row = await conn.fetchrow(_UPDATE, tenant_id, name, *_args(values))
    except asyncpg.UniqueViolationError:
        raise Conflict(f"schedule {values.name} exists") from None
    return None if row is None else schedule_from_row(row)


async def schedule_delete(conn: Conn, tenant_id: str, name: str) -> bool:
    return await conn.fetchval(_DELETE, tenant_id, name) is not None


class Fired(msgspec.Struct, frozen=True):
    """A job created by a schedule for one of its due times."""

    schedule_id: int
    tenant_id: str
    schedule: str
    queue: str
    fire_at: datetime
    job_id: int


class Broken(msgspec.Struct, frozen=True):
    tenant_id: str
    schedule: str
    error: str


class FireBatch(msgspec.Struct, frozen=True):
    due: int  # schedules picked (and locked) in this batch
    fired: list[Fired]
    broken: list[Broken]


class _Plan(msgspec.Struct):
    row: asyncpg.Record
    fire_at: datetime | None
    next_fire_at: datetime


def _plan(row: asyncpg.Record, now: datetime) -> tuple[_Plan, Broken | None]:
    try:
        spec = parse_cron(row["cron"])
        tz = parse_timezone(row["timezone"])
        # Catch-up is at most the most recent due time: a gateway that was down fires once.
        fire_at: datetime | None = prev_fire(spec, now, tz)
        next_at = next_fire(spec, now, tz)
    except ValueError as exc:
        return _Plan(row, None, now + BROKEN_RETRY), Broken(row["tenant_id"], row["name"], str(exc))
    # A due time before next_fire_at belongs to a past the schedule was not armed for
    # (created, resumed or re-timed after it); a disabled tenant's schedules run idle.
    if fire_at is not None and (fire_at < row["next_fire_at"] or row["tenant_disabled"]):
        fire_at = None
    return _Plan(row, fire_at, next_at), None


async def schedule_fire_due(conn: Conn, *, limit: int, default_max_attempts: int) -> FireBatch:
    """Fire up to `limit` due schedules and move each to its next due time.

    Call it inside a transaction: the schedules stay locked until it commits, and the claims,
    the jobs and the advance commit or roll back together.
    """
    rows = await conn.fetch(_DUE, limit)
    if not rows:
        return FireBatch(0, [], [])
    now: datetime = rows[0]["db_now"]
    plans: list[_Plan] = []
    broken: list[Broken] = []
    for row in rows:
        plan, problem = _plan(row, now)
        plans.append(plan)
        if problem is not None:
            broken.append(problem)

    firing = [p for p in plans if p.fire_at is not None]
    claimed: set[tuple[int, datetime]] = set()
    if firing:
        claims = await conn.fetch(_FIRE_INSERT_MANY, [p.row["id"] for p in firing], [p.fire_at for p in firing])
        claimed = {(r["schedule_id"], r["fire_at"]) for r in claims}
    by_tenant: defaultdict[str, list[_Plan]] = defaultdict(list)
    for p in firing:
        if (p.row["id"], p.fire_at) in claimed:
            by_tenant[p.row["tenant_id"]].append(p)

    fired: list[Fired] = []
    for tenant_id, group in by_tenant.items():
        jobs = [
            NewJob(
                queue=p.row["queue"],
                kind=p.row["kind"],
                payload=p.row["payload"],
                priority=p.row["priority"],
                max_attempts=p.row["max_attempts"],
                run_at=p.fire_at,
            )
            for p in group
        ]
        inserted = await job_insert_many(conn, tenant_id, jobs, default_max_attempts=default_max_attempts)
        for p, ins in zip(group, inserted, strict=True):
            if p.fire_at is not None:  # always: only plans with a due time are firing
                fired.append(Fired(p.row["id"], tenant_id, p.row["name"], p.row["queue"], p.fire_at, int(ins.job.id)))
    if fired:
        await conn.execute(
            _FIRE_SET_JOBS,
            [f.schedule_id for f in fired],
            [f.fire_at for f in fired],
            [f.job_id for f in fired],
        )
    await conn.execute(
        _ADVANCE_MANY,
        [p.row["id"] for p in plans],
        [p.next_fire_at for p in plans],
        [p.fire_at for p in plans],
    )
    return FireBatch(len(rows), fired, broken)


async def schedule_next_due_in(conn: Conn) -> float | None:
    """Seconds until the earliest active schedule is due, or None when none is active."""
    v: float | None = await conn.fetchval(_NEXT_DUE)
    return v


async def schedule_fire_prune(conn: Conn, *, older_than_seconds: float, limit: int) -> int:
    n: int = await conn.fetchval(_FIRE_PRUNE, older_than_seconds, limit)
    return n
