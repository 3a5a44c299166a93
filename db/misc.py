"""Liveness and notification probes."""

from __future__ import annotations

from ._queries import sql
from ._types import Conn

_PING = sql("ping")
_NOTIFY_PROBE = sql("notify_probe")

CHANNEL_JOBS = "orch_jobs"
CHANNEL_EVENTS = "orch_events"
CHANNEL_PROBE = "orch_probe"


async def ping(conn: Conn) -> None:
    await conn.fetchval(_PING)


async def notify_probe(conn: Conn, token: str) -> None:
    await conn.execute(_NOTIFY_PROBE, token)
