"""The reaper: expired leases go back to the queue (or to `dead` when attempts are used up).

Safe to run in every gateway process at once: each batch is one statement over rows it locks.
"""

from __future__ import annotations

import asyncio
import logging

import db

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

REAP_BATCH = 500


async def reap(rt: Runtime) -> int:
    """Recover every expired lease now; returns how many."""
    total = 0
    async with rt.pool.acquire() as conn:
        while True:
            n = await db.job_reap_expired(
                conn, limit=REAP_BATCH, base_ms=rt.settings.retry_base_ms, cap_ms=rt.settings.retry_cap_ms
            )
            total += n
            if n < REAP_BATCH:
                break
    if total:
        rt.metrics.jobs_reaped.add(total)
        log.info("recovered expired leases", extra={"count": total})
        rt.due.hint(0.0)
    return total


async def run_reaper(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(rt.settings.reap_interval_seconds)
        try:
            await reap(rt)
        except DB_ERRORS as exc:
            log.warning("reaping failed: %r", exc)
