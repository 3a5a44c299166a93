"""The promotion timer: delayed and retried jobs become ready at their `run_at`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import db

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

PROMOTE_BATCH = 1000
# The timer never sleeps longer than this, so a clock jump or a lost hint heals.
MAX_TIMER_SECONDS = 5.0


async def promote_due(rt: Runtime) -> float | None:
    """Promote due jobs; returns seconds until the next one is due."""
    async with rt.pool.acquire() as conn:
        while True:
            n = await db.job_promote_due(conn, limit=PROMOTE_BATCH)
            if n:
                rt.metrics.jobs_promoted.add(n)
            if n < PROMOTE_BATCH:
                break
        return await db.job_next_due_in(conn)


async def run_promoter(rt: Runtime) -> None:
    due = rt.due
    while True:
        due.changed.clear()
        try:
            next_in = await promote_due(rt)
        except DB_ERRORS as exc:
            log.warning("promoting due jobs failed: %r", exc)
            next_in = 1.0
        wait = MAX_TIMER_SECONDS if next_in is None else min(max(next_in, 0.0), MAX_TIMER_SECONDS)
        due.at = time.monotonic() + wait
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(due.changed.wait(), wait)
        # A hint may name a time a little ahead; sleep until it, not past it.
        delay = due.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
