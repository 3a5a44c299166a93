"""The nonce pruner: forgets request nonces once their timestamps would be refused anyway."""

from __future__ import annotations

import asyncio
import logging

import db
from core import signing

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

PRUNE_EVERY_SECONDS = 60.0


async def run_nonce_pruner(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(PRUNE_EVERY_SECONDS)
        try:
            async with rt.pool.acquire() as conn:
                # Twice the replay window: a nonce is refused for as long as its timestamp is accepted.
                await db.request_nonce_prune(conn, signing.MAX_SKEW_SECONDS * 2)
        except DB_ERRORS as exc:
            log.warning("pruning nonces failed: %r", exc)
