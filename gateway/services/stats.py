"""The database-derived gauges (jobs by state, oldest ready, lags): one cheap query on a timer,
so a scrape never touches the database."""

from __future__ import annotations

import asyncio
import logging

import db

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")


async def refresh_stats(rt: Runtime) -> None:
    async with rt.pool.acquire() as conn:
        rt.metrics.set_stats(await db.stats_read(conn))


async def run_stats(rt: Runtime) -> None:
    while True:
        try:
            await refresh_stats(rt)
        except DB_ERRORS as exc:
            log.warning("reading the gauges' figures failed: %r", exc)
        await asyncio.sleep(rt.settings.stats_interval_seconds)
