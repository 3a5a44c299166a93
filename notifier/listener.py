"""The one LISTEN connection of a gateway process.

It reconnects with backoff, probes its own health, and covers what it may have missed while
down with a catch-up (which queues hold ready jobs) on every reconnect and on a slow safety
poll. Nothing here busy-polls: the poll runs every few seconds and only while requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

import db
from core import Backoff

from .waiters import ANY, EventWaiters, JobWaiters, LeaseWaiters

log = logging.getLogger("orchestrator.notifier")

# Names the LISTEN connection in pg_stat_activity.
LISTEN_APPLICATION_NAME = "orchestrator-listen"
RECONNECT_BASE_SECONDS = 0.1
RECONNECT_CAP_SECONDS = 5.0


class _JobsNews(msgspec.Struct):
    r: list[tuple[str, str, int]] = []
    s: float | None = None  # earliest new run_at (epoch seconds) of scheduled jobs


class _EventsNews(msgspec.Struct):
    t: list[str] = []
    j: list[int] = []
    all: bool = False


_jobs_decoder = msgspec.json.Decoder(_JobsNews)
_events_decoder = msgspec.json.Decoder(_EventsNews)


class Notifier:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        safety_poll_seconds: float = 5.0,
        health_interval_seconds: float = 5.0,
        enabled: bool = True,
        on_due: Callable[[float], None] | None = None,
        on_notification: Callable[[str], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._safety_poll = safety_poll_seconds
        self._health_interval = health_interval_seconds
        self._enabled = enabled
        self._on_due = on_due
        self._on_notification = on_notification
        self._on_reconnect = on_reconnect
        self.lease_waiters = LeaseWaiters()
        self.job_waiters = JobWaiters()
        self.event_waiters = EventWaiters()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._safety_poll_loop(), name="notifier-safety-poll"))
        if self._enabled:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="notifier-listen"))
            # Serve with the LISTEN path up when it can be; the loop keeps trying if not.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), 5.0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self._close()
        self.lease_waiters.wake_all()
        self.job_waiters.wake_all()
        self.event_waiters.wake_all()

    async def probe(self, timeout: float = 2.0) -> bool:
        """True when a notification sent now comes back through the LISTEN connection."""
        if not self.listening:
            return False
        token = secrets.token_hex(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = fut
        try:
            async with self._pool.acquire() as conn:
                await db.notify_probe(conn, token)
            await asyncio.wait_for(fut, timeout)
            return True
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        finally:
            self._probes.pop(token, None)

    # --- the connection ----------------------------------------------------------------

    async def _listen_loop(self) -> None:
        backoff = Backoff(RECONNECT_BASE_SECONDS, RECONNECT_CAP_SECONDS)
        first = True
        while True:
            try:
                await self._connect()
                backoff.reset()
                if not first:
                    log.warning("LISTEN connection re-established; catching up")
                    if self._on_reconnect is not None:
                        self._on_reconnect()
                # Whatever was notified while we were not listening is found by a catch-up.
                await self.catch_up()
                first = False
                await self._watch()
            except (ConnectionError, TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection lost: %r", exc)
            except Exception:
                # Not a connection failure: a bug. Said loudly, then the same recovery.
                log.exception("LISTEN loop failed")
            await self._close()
            await asyncio.sleep(backoff.next())

    async def _connect(self) -> None:
        conn = await db.connect(self._dsn, application_name=LISTEN_APPLICATION_NAME)
        self._lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: self._lost.set())
        await conn.add_listener(db.CHANNEL_JOBS, self._on_jobs)
        await conn.add_listener(db.CHANNEL_EVENTS, self._on_events)
        await conn.add_listener(db.CHANNEL_PROBE, self._on_probe)
        self._conn = conn
        self.connected.set()

    async def _watch(self) -> None:
        """Return when the connection is lost: closed by the server, or not answering."""
        conn = self._conn
        if conn is None:
            raise ConnectionError("LISTEN connection not open")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._health_interval)
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionError("LISTEN connection closed")
            await asyncio.wait_for(db.ping(conn), self._health_interval)

    async def _close(self) -> None:
        self.connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
            if not conn.is_closed():
                conn.terminate()

    # --- catch-up ----------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Wake waiters for every queue that holds ready jobs, and re-arm the due-time timer."""
        if self._on_due is not None:
            self._on_due(0.0)
        self.job_waiters.wake_all()
        # Event readers re-read from their cursor: a missed notification costs one read each.
        self.event_waiters.wake_all()
        if not len(self.lease_waiters):
            return
        async with self._pool.acquire() as conn:
            ready = await db.job_ready_queues(conn)
        for tenant_id, queue in ready:
            self.lease_waiters.wake(tenant_id, queue, 1)

    async def _safety_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._safety_poll * (0.8 + 0.4 * random.random()))
            if len(self.lease_waiters) or len(self.job_waiters) or len(self.event_waiters) or not self._enabled:
                try:
                    await self.catch_up()
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("safety poll failed: %r", exc)
                except Exception:
                    log.exception("safety poll failed")

    # --- dispatch ----------------------------------------------------------------------

    def _on_jobs(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if self._on_notification is not None:
            self._on_notification(db.CHANNEL_JOBS)
        try:
            news = _jobs_decoder.decode(str(payload))
        except msgspec.DecodeError:
            log.warning("unreadable notification on %s: %r", db.CHANNEL_JOBS, str(payload)[:200])
            self.lease_waiters.wake_all()
            return
        for tenant_id, queue, n in news.r:
            self.lease_waiters.wake(tenant_id, queue, n)
        if news.s is not None and self._on_due is not None:
            self._on_due(news.s)

    def _on_events(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if self._on_notification is not None:
            self._on_notification(db.CHANNEL_EVENTS)
        try:
            news = _events_decoder.decode(str(payload))
        except msgspec.DecodeError:
            news = _EventsNews(all=True)
        if news.all:
            self.job_waiters.wake_all()
            self.event_waiters.wake_all()
        else:
            self.job_waiters.wake(news.j)
            self.event_waiters.wake(news.t)

    def _on_probe(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        fut = self._probes.get(str(payload))
        if fut is not None and not fut.done():
            fut.set_result(None)


__all__ = ["ANY", "Notifier"]
