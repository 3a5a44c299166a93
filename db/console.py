"""Bounded reads for the operator's console: job listings over a window of an index, the
dead-letter queue grouped over a sample, and the pages of a filtered bulk replay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import msgspec

from core.wire import AdminJob

from ._queries import one, sql
from ._types import Conn
from .admin import JobFilter, admin_job_from_row
from .jobs import MAX_JOB_ID

_PLAN_FOR_VALUES = sql("plan_for_values")
_WINDOW_ALL = sql("console_window_all")
_WINDOW_TENANT = sql("console_window_tenant")
_WINDOW_TENANT_STATE = sql("console_window_tenant_state")
_WINDOW_STATE = sql("console_window_state")
_BY_IDS = sql("console_jobs_by_ids")
_TENANT_COUNT = sql("console_tenant_count")
_DEAD_GROUPS = sql("console_dead_groups")
_DEAD_GROUPS_QUEUE = sql("console_dead_groups_queue")
_DEAD_COUNT = sql("console_dead_count")
_DEAD_COUNT_TENANT = sql("console_dead_count_tenant")
_DEAD_COUNT_INDEXED = sql("console_dead_count_indexed")
_DEAD_IDS = sql("console_dead_ids")
_PAUSES = sql("console_queue_pauses")


@asynccontextmanager
async def _planned_for_values(conn: Conn) -> AsyncIterator[None]:
    """Statements planned for the values they are given, as `job_admin_list`'s are: a cached
    generic plan takes a big tenant for an average one (a transaction of its own, or a savepoint)."""
    async with conn.transaction():
        await conn.execute(_PLAN_FOR_VALUES)
        yield


class JobWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a windowed listing: the matches newest first (at most the limit asked plus one,
    so the caller can tell there are more) and `low`, the lowest id the window covered (0: it
    reached the oldest job); the next page continues below the last match, or below `low`."""

    jobs: list[AdminJob]
    low: int


async def job_window(conn: Conn, f: JobFilter, *, before_id: int | None, limit: int, window: int) -> JobWindow:
    """Jobs matching `f` (queue or kind included, but neither an id nor an idempotency key) among
    the newest `window` entries below `before_id` of the index that serves the tenant and state."""
    async with _planned_for_values(conn):
        return await _job_window(conn, f, before_id=before_id, limit=limit, window=window)


async def _job_window(conn: Conn, f: JobFilter, *, before_id: int | None, limit: int, window: int) -> JobWindow:
    before = MAX_JOB_ID if before_id is None else before_id
    if f.tenant_id is not None and f.state is not None:
        args: tuple[object, ...] = (f.tenant_id, f.state, before, window, f.queue, f.kind, limit)
        row = one(await conn.fetchrow(_WINDOW_TENANT_STATE, *args))
    elif f.tenant_id is not None:
        row = one(await conn.fetchrow(_WINDOW_TENANT, f.tenant_id, before, window, f.queue, f.kind, limit))
    elif f.state is not None:
        tenants: int = await conn.fetchval(_TENANT_COUNT)
        # The window is shared among the tenants, so a page reads about `window` entries in all.
        per_tenant = max(limit, window // max(1, tenants))
        row = one(await conn.fetchrow(_WINDOW_STATE, f.state, before, per_tenant, f.queue, f.kind, limit))
    else:
        row = one(await conn.fetchrow(_WINDOW_ALL, before, window, f.queue, f.kind, limit))
    ids = list(row["ids"])
    jobs = [admin_job_from_row(r) for r in await conn.fetch(_BY_IDS, ids)] if ids else []
    return JobWindow(jobs=jobs, low=int(row["low"]))


class DeadGroup(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    queue: str
    kind: str
    error: str  # the last line of the error: the exception a traceback ends with
    jobs: int  # in the sample
    newest_id: int
    first_at: datetime
    last_at: datetime


async def dead_groups(
    conn: Conn, tenant_id: str | None, queue: str | None, *, per_tenant: int, limit: int
) -> list[DeadGroup]:
    """The dead jobs grouped by tenant, queue, kind and error, over each tenant's newest
    `per_tenant` dead jobs (of the queue, when one is given); the `limit` largest groups."""
    async with _planned_for_values(conn):
        if queue is None:
            rows = await conn.fetch(_DEAD_GROUPS, tenant_id, per_tenant, limit)
        else:
            rows = await conn.fetch(_DEAD_GROUPS_QUEUE, tenant_id, queue, per_tenant, limit)
    return [
        DeadGroup(
            tenant_id=r["tenant_id"],
            queue=r["queue"],
            kind=r["kind"],
            error=r["error"],
            jobs=r["n"],
            newest_id=r["newest_id"],
            first_at=r["first_at"],
            last_at=r["last_at"],
        )
        for r in rows
    ]


class DeadCount(msgspec.Struct, frozen=True, kw_only=True):
    matched: int
    exact: bool  # False: the window filled, there may be more


async def dead_count(
    conn: Conn,
    tenant_id: str,
    queue: str | None,
    kind: str | None,
    error: str | None,
    *,
    cap: int,
    window: int,
) -> DeadCount:
    """How many of the tenant's dead jobs match the filter: counted up to `cap` from an index
    for a tenant and queue; among the `window` that died last when a kind or an error must be read."""
    async with _planned_for_values(conn):
        if kind is None and error is None:
            n: int = await conn.fetchval(_DEAD_COUNT_INDEXED, tenant_id, queue, cap)
            return DeadCount(matched=n, exact=n < cap)
        if queue is None:
            row = one(await conn.fetchrow(_DEAD_COUNT_TENANT, tenant_id, kind, error, window))
        else:
            row = one(await conn.fetchrow(_DEAD_COUNT, tenant_id, queue, kind, error, window))
    return DeadCount(matched=row["matched"], exact=row["scanned"] < window)


async def dead_ids(
    conn: Conn,
    tenant_id: str,
    queue: str | None,
    kind: str | None,
    error: str | None,
    *,
    after_id: int,
    limit: int,
) -> list[int]:
    """A page of the tenant's dead jobs matching the filter, oldest first after `after_id`."""
    async with _planned_for_values(conn):
        rows = await conn.fetch(_DEAD_IDS, tenant_id, after_id, queue, kind, error, limit)
    return [r["id"] for r in rows]


class QueuePause(msgspec.Struct, frozen=True):
    tenant_id: str
    queue: str
    paused_at: datetime


async def queue_pauses(conn: Conn, limit: int) -> list[QueuePause]:
    """Every tenant's paused queues (the first `limit`)."""
    return [QueuePause(r["tenant_id"], r["queue"], r["paused_at"]) for r in await conn.fetch(_PAUSES, limit)]
