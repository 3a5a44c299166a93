"""The operator's reads across tenants, and deleting a tenant."""

from __future__ import annotations

import asyncpg
import msgspec

from core import EventType
from core.wire import AdminJob, ApiKeyInfo, Event, QueueInfo, Schedule, WorkerInfo

from ._queries import one, sql
from ._types import Conn
from .events import Cursor, WebhookRow, _webhook
from .jobs import MAX_JOB_ID
from .rows import _job_fields
from .schedules import schedule_from_row

_PLAN_FOR_VALUES = sql("plan_for_values")
_KEY_LIST = sql("admin_key_list")
_JOB_GET = sql("admin_job_get")
_JOB_EVENTS = sql("admin_job_events")
_LIST_BY_ID = sql("admin_job_list_by_id")
_LIST_BY_KEY = sql("admin_job_list_by_key")
_LIST_BY_KEY_ALL = sql("admin_job_list_by_key_all")
_LIST_TENANT = sql("admin_job_list_tenant")
_LIST_TENANT_STATE = sql("admin_job_list_tenant_state")
_LIST_ALL = sql("admin_job_list_all")
_LIST_ALL_STATE = sql("admin_job_list_all_state")
_WORKERS = sql("admin_worker_list")
_QUEUES = sql("admin_queue_list")
_SCHEDULES = sql("admin_schedule_list")
_WEBHOOKS = sql("admin_webhook_list")
_TENANT_LOCK = sql("tenant_lock")
_TENANT_RUNNING = sql("tenant_running_count")
_TENANT_DELETE_JOBS = sql("tenant_delete_jobs")
_TENANT_DELETE_EVENTS = sql("tenant_delete_events")
_TENANT_DELETE = sql("tenant_delete")


def admin_job_from_row(r: asyncpg.Record) -> AdminJob:
    return AdminJob(
        **_job_fields(r),
        worker_id=r["worker_id"],
        lease_token=r["lease_token"],
        lease_expires_at=r["lease_expires_at"],
    )


async def api_key_list(conn: Conn, tenant_id: str) -> list[ApiKeyInfo]:
    return [
        ApiKeyInfo(
            key_id=r["key_id"],
            tenant_id=r["tenant_id"],
            created_at=r["created_at"],
            revoked=r["revoked_at"] is not None,
            revoked_at=r["revoked_at"],
        )
        for r in await conn.fetch(_KEY_LIST, tenant_id)
    ]


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What an operator's job listing keeps; None: any."""

    tenant_id: str | None = None
    queue: str | None = None
    state: str | None = None
    kind: str | None = None
    job_id: int | None = None
    idempotency_key: str | None = None


async def job_admin_list(conn: Conn, f: JobFilter, *, before_id: int | None, limit: int) -> list[AdminJob]:
    """Jobs of every tenant (or one) matching `f`, newest first, with ids below `before_id`.
    Each combination of filters runs the statement whose index serves it, planned for its values
    (in a transaction of its own, or a savepoint of the caller's)."""
    before = MAX_JOB_ID if before_id is None else before_id
    async with conn.transaction():
        await conn.execute(_PLAN_FOR_VALUES)
        if f.job_id is not None:
            args: tuple[object, ...] = (f.job_id, before, f.tenant_id, f.state, f.queue, f.kind, f.idempotency_key)
            rows = await conn.fetch(_LIST_BY_ID, *args)
        elif f.idempotency_key is not None and f.tenant_id is not None:
            rows = await conn.fetch(_LIST_BY_KEY, f.tenant_id, f.idempotency_key, before, f.state, f.queue, f.kind)
        elif f.idempotency_key is not None:
            rows = await conn.fetch(_LIST_BY_KEY_ALL, f.idempotency_key, before, f.state, f.queue, f.kind, limit)
        elif f.tenant_id is not None and f.state is not None:
            rows = await conn.fetch(_LIST_TENANT_STATE, f.tenant_id, f.state, before, f.queue, f.kind, limit)
        elif f.tenant_id is not None:
            rows = await conn.fetch(_LIST_TENANT, f.tenant_id, before, f.queue, f.kind, limit)
        elif f.state is not None:
            rows = await conn.fetch(_LIST_ALL_STATE, f.state, before, f.queue, f.kind, limit)
        else:
            rows = await conn.fetch(_LIST_ALL, before, f.queue, f.kind, limit)
    return [admin_job_from_row(r) for r in rows]


async def job_admin_get(conn: Conn, job_id: int) -> AdminJob | None:
    row = await conn.fetchrow(_JOB_GET, job_id)
    return None if row is None else admin_job_from_row(row)


async def job_events(conn: Conn, job_id: int, limit: int) -> list[Event]:
    """The newest `limit` events of a job, oldest first."""
    rows = await conn.fetch(_JOB_EVENTS, job_id, limit)
    return [
        Event(
            id=str(Cursor(r["xid"], r["id"])),
            type=EventType(r["type"]),
            job_id=str(r["job_id"]),
            tenant_id=r["tenant_id"],
            queue=r["queue"],
            at=r["at"],
            data=r["data"],
        )
        for r in reversed(rows)
    ]


async def worker_list(conn: Conn, tenant_id: str | None) -> list[WorkerInfo]:
    return [
        WorkerInfo(
            worker_id=r["worker_id"],
            leases=r["leases"],
            expired=r["expired"],
            tenants=list(r["tenants"]),
            queues=list(r["queues"]),
            last_leased_at=r["last_leased_at"],
            next_expiry_at=r["next_expiry_at"],
        )
        for r in await conn.fetch(_WORKERS, tenant_id)
    ]


async def queue_list(conn: Conn, tenant_id: str | None) -> list[QueueInfo]:
    return [
        QueueInfo(
            tenant_id=r["tenant_id"],
            queue=r["queue"],
            paused=r["paused"],
            scheduled=r["scheduled"],
            ready=r["ready"],
            running=r["running"],
            dead=r["dead"],
            oldest_ready_seconds=r["oldest_ready_s"],
        )
        for r in await conn.fetch(_QUEUES, tenant_id)
    ]


async def schedule_admin_list(
    conn: Conn, tenant_id: str | None, after_id: int, limit: int
) -> list[tuple[int, Schedule]]:
    """(id, schedule) pairs in id order after `after_id`; the id is the listing's cursor."""
    return [(r["id"], schedule_from_row(r)) for r in await conn.fetch(_SCHEDULES, tenant_id, after_id, limit)]


async def webhook_admin_list(conn: Conn, tenant_id: str | None, after_id: int, limit: int) -> list[WebhookRow]:
    return [_webhook(r) for r in await conn.fetch(_WEBHOOKS, tenant_id, after_id, limit)]


class TenantDeletion(msgspec.Struct, frozen=True, kw_only=True):
    jobs: int
    running_jobs: int
    keys: int
    schedules: int
    webhooks: int
    consumers: int
    events: int


async def tenant_lock(conn: Conn, tenant_id: str) -> bool:
    """Lock the tenant's row for the transaction; False when there is no such tenant."""
    return await conn.fetchval(_TENANT_LOCK, tenant_id) is not None


async def tenant_running_count(conn: Conn, tenant_id: str) -> int:
    n: int = await conn.fetchval(_TENANT_RUNNING, tenant_id)
    return n


DELETE_PAGE = 5000


async def tenant_delete(conn: Conn, tenant_id: str) -> TenantDeletion:
    """Delete the tenant and everything of it, events included, a page per statement. Call it
    in a transaction, after `tenant_lock`; the caller decides whether `running_jobs` may be
    more than 0."""
    jobs = running = 0
    before = MAX_JOB_ID
    while True:
        page = one(await conn.fetchrow(_TENANT_DELETE_JOBS, tenant_id, before, DELETE_PAGE))
        jobs += page["n"]
        running += page["running"]
        if page["n"] < DELETE_PAGE:
            break
        before = page["last"]
    events = 0
    after = Cursor(0, 0)
    while True:
        page = one(await conn.fetchrow(_TENANT_DELETE_EVENTS, tenant_id, after.xid, after.id, DELETE_PAGE))
        events += page["n"]
        if page["n"] < DELETE_PAGE:
            break
        after = Cursor(page["last_xid"], page["last_id"])
    rest = one(await conn.fetchrow(_TENANT_DELETE, tenant_id))
    return TenantDeletion(
        jobs=jobs,
        running_jobs=running,
        keys=rest["keys"],
        schedules=rest["schedules"],
        webhooks=rest["webhooks"],
        consumers=rest["consumers"],
        events=events,
    )
