"""Job commands: each takes an explicit connection, opens no transaction of its own, and is
batch-first, so callers compose several in one transaction."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from core.wire import Job, LeasedJob

from ._queries import sql
from ._types import Conn
from .rows import job_from_row, leased_job_from_row

MAX_JOB_ID = 2**63 - 1

_INSERT_MANY = sql("job_insert_many")
_BY_KEYS = sql("job_get_by_idempotency_keys")
_GET = sql("job_get")
_LIST = sql("job_list")
_LIST_BY_STATE = sql("job_list_by_state")
_RUNNABLE_FORGET = sql("runnable_queue_forget")
_QUEUE_PAUSE = sql("queue_pause")
_QUEUE_RESUME = sql("queue_resume")
_QUEUE_PAUSED = sql("queue_paused_list")
_LEASE = sql("job_lease")
_LEASE_SHARED = sql("job_lease_shared")
_HEARTBEAT = sql("job_heartbeat")
_COMPLETE_MANY = sql("job_complete_many")
_FAIL_MANY = sql("job_fail_many")
_REAP = sql("job_reap_expired")
_PROMOTE = sql("job_promote_due")
_NEXT_DUE = sql("job_next_due_in")
_READY_QUEUES = sql("job_ready_queues")
_CANCEL = sql("job_cancel")
_REPLAY_MANY = sql("job_replay_many")
_DEAD_IDS = sql("job_dead_ids")


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    max_attempts: int | None = None  # None: the tenant's retry policy, else the deployment default
    run_at: datetime | None = None
    delay_ms: int | None = None
    idempotency_key: str | None = None
    timeout_seconds: int | None = None
    retry_base_ms: int | None = None
    retry_cap_ms: int | None = None


class Inserted(msgspec.Struct, frozen=True):
    job: Job
    created: bool


async def job_insert_many(
    conn: Conn, tenant_id: str, jobs: Sequence[NewJob], *, default_max_attempts: int, traceparent: str | None = None
) -> list[Inserted]:
    """Insert jobs in order; an idempotency key seen before yields the first job, not a new one."""
    rows = await conn.fetch(
        _INSERT_MANY,
        tenant_id,
        [j.queue for j in jobs],
        [j.kind for j in jobs],
        [j.payload for j in jobs],
        [j.priority for j in jobs],
        [j.delay_ms for j in jobs],
        [j.run_at for j in jobs],
        [j.max_attempts for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.timeout_seconds for j in jobs],
        [j.retry_base_ms for j in jobs],
        [j.retry_cap_ms for j in jobs],
        default_max_attempts,
        traceparent,
    )
    # Inserted rows come back in input order (ids follow it); rows with a key may be missing.
    by_key = {r["idempotency_key"]: job_from_row(r) for r in rows if r["idempotency_key"] is not None}
    keyless = iter([job_from_row(r) for r in rows if r["idempotency_key"] is None])
    missing = [j.idempotency_key for j in jobs if j.idempotency_key is not None and j.idempotency_key not in by_key]
    existing: dict[str, Job] = {}
    if missing:
        for r in await conn.fetch(_BY_KEYS, tenant_id, missing):
            existing[r["idempotency_key"]] = job_from_row(r)
        # A key whose job retention deleted between the two statements is free again: submit anew.
        freed: dict[str, NewJob] = {}
        for j in jobs:
            key = j.idempotency_key
            if key is not None and key not in by_key and key not in existing:
                freed.setdefault(key, j)
        if freed:
            again = await job_insert_many(
                conn,
                tenant_id,
                list(freed.values()),
                default_max_attempts=default_max_attempts,
                traceparent=traceparent,
            )
            for i in again:
                (by_key if i.created else existing)[str(i.job.idempotency_key)] = i.job
    out: list[Inserted] = []
    for j in jobs:
        key = j.idempotency_key
        if key is None:
            out.append(Inserted(next(keyless), True))
        elif key in by_key:
            # A key repeated inside one batch: its first occurrence created the job.
            out.append(Inserted(by_key.pop(key), True))
            existing[key] = out[-1].job
        else:
            out.append(Inserted(existing[key], False))
    return out


async def job_get(conn: Conn, job_id: int, tenant_id: str | None) -> Job | None:
    row = await conn.fetchrow(_GET, job_id, tenant_id)
    return None if row is None else job_from_row(row)


async def job_list(
    conn: Conn, tenant_id: str, *, state: str | None, queue: str | None, before_id: int | None, limit: int
) -> list[Job]:
    before = MAX_JOB_ID if before_id is None else before_id
    if state is None:
        rows = await conn.fetch(_LIST, tenant_id, queue, before, limit)
    else:
        rows = await conn.fetch(_LIST_BY_STATE, tenant_id, state, queue, before, limit)
    return [job_from_row(r) for r in rows]


async def runnable_queue_forget(conn: Conn, tenant_id: str, queues: Sequence[str]) -> None:
    """Forget the tenant's pairs that hold no ready job, unless a transaction is making one ready
    in them now. Outside a transaction: the pair locks last until the statement's end."""
    await conn.execute(_RUNNABLE_FORGET, tenant_id, list(queues))


async def queue_pause(conn: Conn, tenant_id: str, queue: str) -> None:
    await conn.execute(_QUEUE_PAUSE, tenant_id, queue)


async def queue_resume(conn: Conn, tenant_id: str, queue: str) -> None:
    await conn.execute(_QUEUE_RESUME, tenant_id, queue)


async def queue_paused_list(conn: Conn, tenant_id: str) -> list[str]:
    return [r["queue"] for r in await conn.fetch(_QUEUE_PAUSED, tenant_id)]


async def job_lease(
    conn: Conn,
    tenant_id: str,
    queues: Sequence[str],
    slots: Sequence[str],
    lease_seconds: int,
    *,
    pass_floor: float | None = None,
    fifo: bool = False,
) -> list[tuple[str, LeasedJob]]:
    """Lease up to one ready job per slot, each for the worker its slot names (a job's
    worker comes with it), fewer when the tenant's in-flight cap leaves less room.
    `pass_floor` (shared leases) advances the tenant's fair-share pass; `fifo` takes the oldest
    jobs whatever their priority. One statement: call it outside a transaction, or the cap's
    lock is held to that transaction's end."""
    rows = await conn.fetch(_LEASE, tenant_id, list(queues), list(slots), lease_seconds, pass_floor, fifo)
    return [(r["worker_id"], leased_job_from_row(r)) for r in rows]


async def job_lease_shared(
    conn: Conn,
    queues: Sequence[str],
    slots: Sequence[str],
    lease_seconds: int,
    *,
    candidates: int,
    join_credit: float,
    fifo: bool = False,
) -> list[tuple[str, LeasedJob]]:
    """A shared worker's lease: up to `candidates` tenants, least served by weight first, each
    leasing from the slots the ones before it left (its fair-share pass advanced, from a floor of
    the first candidate's pass less `join_credit`). The jobs come tenant by tenant. One statement,
    outside a transaction (as `job_lease`)."""
    rows = await conn.fetch(_LEASE_SHARED, list(queues), list(slots), lease_seconds, candidates, join_credit, fifo)
    return [(r["worker_id"], leased_job_from_row(r)) for r in rows]


async def job_heartbeat(
    conn: Conn, job_id: int, lease_token: int, extend_seconds: int, tenant_id: str | None
) -> tuple[datetime, bool] | None:
    row = await conn.fetchrow(_HEARTBEAT, job_id, lease_token, extend_seconds, tenant_id)
    return None if row is None else (row["lease_expires_at"], row["cancel_requested"])


class Outcome(msgspec.Struct, frozen=True):
    """A job after a complete or fail: `changed` is False when this call changed nothing."""

    job: Job
    changed: bool
    lease_token: int | None


def _outcomes(rows: Sequence[asyncpg.Record]) -> dict[int, Outcome]:
    return {r["id"]: Outcome(job_from_row(r), r["changed"], r["lease_token"]) for r in rows}


async def job_complete_many(
    conn: Conn, items: Sequence[tuple[int, int, Any]], tenant_id: str | None
) -> dict[int, Outcome]:
    """Complete (job id, lease token, result) items; jobs not visible to the tenant are absent."""
    rows = await conn.fetch(
        _COMPLETE_MANY, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], tenant_id
    )
    return _outcomes(rows)


class FailItem(msgspec.Struct, frozen=True):
    job_id: int
    lease_token: int
    error: str
    retryable: bool
    retry_in_ms: int | None
    snooze: bool = False  # re-schedule after retry_in_ms without counting the attempt


async def job_fail_many(
    conn: Conn, items: Sequence[FailItem], tenant_id: str | None, *, base_ms: int, cap_ms: int
) -> dict[int, Outcome]:
    rows = await conn.fetch(
        _FAIL_MANY,
        [i.job_id for i in items],
        [i.lease_token for i in items],
        [i.error for i in items],
        [i.retryable for i in items],
        [i.retry_in_ms for i in items],
        [random.random() for _ in items],
        base_ms,
        cap_ms,
        tenant_id,
        [i.snooze for i in items],
    )
    return _outcomes(rows)


async def job_reap_expired(conn: Conn, *, limit: int, base_ms: int, cap_ms: int) -> int:
    n: int = await conn.fetchval(_REAP, limit, base_ms, cap_ms)
    return n


async def job_promote_due(conn: Conn, *, limit: int) -> int:
    n: int = await conn.fetchval(_PROMOTE, limit)
    return n


async def job_next_due_in(conn: Conn) -> float | None:
    """Seconds until the earliest scheduled job is due, or None when none is scheduled."""
    v: float | None = await conn.fetchval(_NEXT_DUE)
    return v


async def job_ready_queues(conn: Conn) -> list[tuple[str, str]]:
    return [(r["tenant_id"], r["queue"]) for r in await conn.fetch(_READY_QUEUES)]


async def job_cancel(conn: Conn, job_id: int, tenant_id: str) -> Outcome | None:
    """Cancel or mark for cancellation; None when the tenant has no such job."""
    row = await conn.fetchrow(_CANCEL, job_id, tenant_id)
    return None if row is None else Outcome(job_from_row(row), row["changed"], row["lease_token"])


async def job_replay_many(conn: Conn, job_ids: Sequence[int], tenant_id: str | None) -> dict[int, Outcome]:
    """Send dead or cancelled jobs back to ready; others come back unchanged."""
    return _outcomes(await conn.fetch(_REPLAY_MANY, list(job_ids), tenant_id))


async def job_dead_ids(conn: Conn, tenant_id: str, queue: str | None, after_id: int, limit: int) -> list[int]:
    return [r["id"] for r in await conn.fetch(_DEAD_IDS, tenant_id, queue, after_id, limit)]
