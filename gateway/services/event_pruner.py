"""The event pruner: events past their retention are deleted in batches, by one gateway at a time."""

from __future__ import annotations

import asyncio
import logging

import db

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

PRUNE_BATCH = 5000


async def prune_events(rt: Runtime) -> int:
    """Delete events past the retention in batches, each its own short transaction."""
    total = 0
    async with rt.pool.acquire() as conn:
        while True:
            async with conn.transaction():
                if not await db.event_prune_lock(conn):
                    break  # another gateway is pruning
                n = await db.event_prune(conn, rt.settings.event_retention_seconds, PRUNE_BATCH)
            total += n
            if n == 0:
                break
    if total:
        rt.metrics.events_pruned.add(total)
    return total


async def run_event_pruner(rt: Runtime) -> None:
    """Prune events every `event_prune_interval_seconds` until cancelled."""
    while True:
        await asyncio.sleep(rt.settings.event_prune_interval_seconds)
        try:
            n = await prune_events(rt)
            if n:
                log.info("pruned %d events older than %d s", n, rt.settings.event_retention_seconds)
        except DB_ERRORS as exc:
            log.warning("pruning events failed: %r", exc)
