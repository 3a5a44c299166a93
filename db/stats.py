"""What the database-derived gauges report, read in one pass."""

from __future__ import annotations

import msgspec

from ._queries import sql
from ._types import Conn
from .events import Backlog, consumer_lags, webhook_backlogs

_JOBS = sql("stats_jobs")
_TENANTS = sql("stats_tenants")


class QueueStateCount(msgspec.Struct, frozen=True):
    tenant_id: str
    queue: str
    state: str
    count: int
    oldest_ready_seconds: float | None


class TenantLimits(msgspec.Struct, frozen=True):
    tenant_id: str
    weight: int
    max_inflight: int | None


class Stats(msgspec.Struct, frozen=True):
    jobs: list[QueueStateCount]
    tenants: list[TenantLimits]
    consumer_lags: list[Backlog] = []
    webhook_backlogs: list[Backlog] = []


async def stats_read(conn: Conn) -> Stats:
    async with conn.transaction():
        # Serial: with a large backlog the planner takes a parallel scan, which holds every core
        # of a small machine for the same wall time that one core needs alone.
        await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        counts = await conn.fetch(_JOBS)
    jobs = [QueueStateCount(r["tenant_id"], r["queue"], r["state"], r["n"], r["oldest_ready_s"]) for r in counts]
    tenants = [TenantLimits(r["id"], r["weight"], r["max_inflight"]) for r in await conn.fetch(_TENANTS)]
    return Stats(
        jobs=jobs,
        tenants=tenants,
        consumer_lags=await consumer_lags(conn),
        webhook_backlogs=await webhook_backlogs(conn),
    )
