"""The job pruner: finished jobs past their retention are deleted in small batches, by one
gateway at a time (docs/lifecycle.md, "Retention")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import db
from core import JobState, Settings

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

# Each batch is one short transaction deleting this many rows at most, by primary key; the pause
# between batches leaves room to leases, submits and autovacuum.
PRUNE_BATCH = 1000
PRUNE_PAUSE_SECONDS = 0.05
# A pass with more to do than this ends, logs its progress, and the next one starts at once.
PASS_BUDGET_SECONDS = 10.0


def retention_defaults(settings: Settings) -> dict[JobState, int | None]:
    """The deployment's retention of each final state."""
    return {
        JobState.SUCCEEDED: settings.retain_succeeded_seconds,
        JobState.CANCELLED: settings.retain_cancelled_seconds,
        JobState.DEAD: settings.retain_dead_seconds,
    }


@dataclass
class PassResult:
    pruned: Counter[JobState] = field(default_factory=Counter)
    lag_seconds: float = 0.0  # how long the most overdue job was past its retention at the last scan
    worst_lag_seconds: float = 0.0  # the same at the scan that found the most overdue job
    next_due_in: float | None = None  # seconds until the next group known falls due
    more: bool = False  # stopped by its time budget with jobs still due
    locked_out: bool = False  # another gateway is pruning


async def prune_jobs(rt: Runtime) -> PassResult:
    """One pass: scan for groups of finished jobs that are due, delete them batch by batch, and
    scan again, until nothing is due, the budget runs out, or another gateway takes over."""
    result = PassResult()
    defaults = retention_defaults(rt.settings)
    deadline = time.monotonic() + PASS_BUDGET_SECONDS
    async with rt.pool.acquire() as conn:
        while True:
            async with conn.transaction():
                if not await db.job_prune_lock(conn):
                    result.locked_out = True
                    break
                groups = await db.job_retention_scan(conn, defaults)
            due = [g for g in groups if g.due_in < 0]
            result.lag_seconds = max((-g.due_in for g in due), default=0.0)
            result.worst_lag_seconds = max(result.worst_lag_seconds, result.lag_seconds)
            result.next_due_in = min((g.due_in for g in groups if g.due_in >= 0), default=None)
            rt.metrics.job_retention_lag = result.lag_seconds
            if not due:
                break
            if time.monotonic() > deadline:
                result.more = True
                break
            deleted = await _delete_due(rt, conn, due, result, deadline)
            if deleted == 0:
                break  # what is due is held by other transactions: the next pass retries it
            await asyncio.sleep(PRUNE_PAUSE_SECONDS)
    if result.locked_out:
        rt.metrics.job_retention_lag = 0.0  # the gateway holding the lock reports it
    return result


async def _delete_due(
    rt: Runtime, conn: db.Conn, due: list[db.RetentionGroup], result: PassResult, deadline: float
) -> int:
    deleted = 0
    while due:
        async with conn.transaction():
            if not await db.job_prune_lock(conn):
                result.locked_out = True
                return deleted
            batch = await db.job_prune(conn, due, PRUNE_BATCH)
        n = sum(p.count for p in batch)
        for p in batch:
            result.pruned[p.state] += p.count
            rt.metrics.jobs_pruned.add(p.count, {"state": p.state.value})
        deleted += n
        if n < PRUNE_BATCH:
            return deleted  # every group gave all it had
        # Groups are taken in order: those before the last one deleted from are exhausted.
        due = due[max(p.index for p in batch) :]
        if time.monotonic() > deadline:
            return deleted
        await asyncio.sleep(PRUNE_PAUSE_SECONDS)
    return deleted


def _summary(pruned: Counter[JobState]) -> str:
    return ", ".join(f"{s.value} {pruned[s]}" for s in db.RETAINED_STATES if pruned[s])


async def run_job_pruner(rt: Runtime) -> None:
    """Prune at least every `job_prune_interval_seconds`, sooner when a known group falls due
    earlier, and at once while a pass leaves work behind, until cancelled."""
    interval = rt.settings.job_prune_interval_seconds
    while True:
        wait = interval
        try:
            result = await prune_jobs(rt)
            total = sum(result.pruned.values())
            if total:
                log.info(
                    "pruned %d finished jobs past their retention (%s), the most overdue %.1f s past it",
                    total,
                    _summary(result.pruned),
                    result.worst_lag_seconds,
                )
            if result.more:
                wait = PRUNE_PAUSE_SECONDS
            elif result.next_due_in is not None and not result.locked_out:
                wait = min(interval, result.next_due_in + PRUNE_PAUSE_SECONDS)
        except DB_ERRORS as exc:
            log.warning("pruning finished jobs failed: %r", exc)
        await asyncio.sleep(wait)
