"""The cron firer: every gateway process fires due schedules.

Each due time is claimed by a unique (schedule, fire time) row in the database, so the processes
need no leader and no lock between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

import db

from ..errors import DB_ERRORS
from ..runtime import Runtime

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


def wake(rt: Runtime) -> None:
    """Have this process's firer look at the schedules now."""
    event = _wakeups.get(rt)
    if event is not None:
        event.set()


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


async def run_scheduler(rt: Runtime) -> None:
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
        except DB_ERRORS as exc:
            log.warning("firing schedules failed: %r", exc)
            next_in = MAX_SLEEP_SECONDS
        if next_in is None:
            wait = MAX_SLEEP_SECONDS
        elif next_in <= 0:
            wait = OVERDUE_RETRY_SECONDS
        else:
            wait = min(next_in, MAX_SLEEP_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
