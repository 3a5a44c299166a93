"""What one gateway process holds: pool, notifier, metrics, and its background services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import asyncpg

import db
from core import Settings
from notifier import Notifier

from . import metrics_merge
from .keycache import SecretCache
from .metrics import Metrics
from .tracing import Tracing

log = logging.getLogger("orchestrator.gateway")

REAP_BATCH = 500
PROMOTE_BATCH = 1000
# The promotion timer never sleeps longer than this, so a clock jump or a lost hint heals.
MAX_TIMER_SECONDS = 5.0


class Runtime:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, dsn: str) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = Metrics(tenant_label=settings.metrics_tenant_label)
        self.key_secrets = SecretCache()
        self.tracing = Tracing(settings.traces)
        self._due_at = 0.0  # monotonic time at which the timer should next promote
        self._due_changed = asyncio.Event()
        self.notifier = Notifier(
            dsn,
            pool,
            safety_poll_seconds=settings.safety_poll_seconds,
            enabled=settings.notifier_enabled,
            on_due=self._on_due,
            on_notification=lambda ch: self.metrics.notifications.add(1, {"channel": ch}),
            on_reconnect=lambda: self.metrics.listen_reconnects.add(1),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics.observe_gauge(
            "orch_parked_long_polls", "Lease requests parked", lambda: len(self.notifier.lease_waiters)
        )
        self.metrics.observe_gauge(
            "orch_pool_connections_in_use", "Pool connections in use", lambda: pool.get_size() - pool.get_idle_size()
        )
        self.metrics.observe_gauge("orch_pool_connections_idle", "Idle pool connections", lambda: pool.get_idle_size())
        self.metrics.observe_gauge(
            "orch_listen_up", "1 while the LISTEN connection is up", lambda: float(self.notifier.listening)
        )
        self.metrics.observe_gauge(
            "orch_event_waiters",
            "Event long-polls, streams and publishers parked",
            lambda: len(self.notifier.event_waiters),
        )

    async def start(self) -> None:
        await self.notifier.start()
        self._tasks = [
            asyncio.create_task(self._promote_loop(), name="promoter"),
            asyncio.create_task(self._reap_loop(), name="reaper"),
            asyncio.create_task(self._prune_loop(), name="nonce-pruner"),
            asyncio.create_task(self._stats_loop(), name="stats"),
        ]
        if self.settings.metrics_dir is not None:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(), name="metrics-snapshot"))
        from .schedules import run_schedules  # here, not at the top: schedules -> auth -> runtime

        self._tasks.append(asyncio.create_task(run_schedules(self), name="scheduler"))
        from .events import run_event_pruner  # here, not at the top: events -> auth -> runtime
        from .webhooks import run_webhook_publisher

        self._tasks.append(asyncio.create_task(run_event_pruner(self), name="event-pruner"))
        self._tasks.append(asyncio.create_task(run_webhook_publisher(self), name="webhook-publisher"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.notifier.stop()
        self.metrics.shutdown()
        self.tracing.shutdown()

    # --- delayed jobs ------------------------------------------------------------------

    def _on_due(self, epoch: float) -> None:
        """A job becomes due at `epoch` (wall clock); re-arm the timer if that is sooner."""
        at = time.monotonic() + max(0.0, epoch - time.time())
        if at < self._due_at:
            self._due_at = at
            self._due_changed.set()

    async def promote_due(self) -> float | None:
        """Promote due jobs; returns seconds until the next one is due."""
        async with self.pool.acquire() as conn:
            while True:
                n = await db.job_promote_due(conn, limit=PROMOTE_BATCH)
                if n:
                    self.metrics.jobs_promoted.add(n)
                if n < PROMOTE_BATCH:
                    break
            return await db.job_next_due_in(conn)

    async def _promote_loop(self) -> None:
        while True:
            self._due_changed.clear()
            try:
                next_in = await self.promote_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("promoting due jobs failed: %s", exc)
                next_in = 1.0
            wait = MAX_TIMER_SECONDS if next_in is None else min(max(next_in, 0.0), MAX_TIMER_SECONDS)
            self._due_at = time.monotonic() + wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due_changed.wait(), wait)
            # A hint may name a time a little ahead; sleep until it, not past it.
            delay = self._due_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    # --- expired leases ----------------------------------------------------------------

    async def reap(self) -> int:
        total = 0
        async with self.pool.acquire() as conn:
            while True:
                n = await db.job_reap_expired(
                    conn, limit=REAP_BATCH, base_ms=self.settings.retry_base_ms, cap_ms=self.settings.retry_cap_ms
                )
                total += n
                if n < REAP_BATCH:
                    break
        if total:
            self.metrics.jobs_reaped.add(total)
            log.info("recovered expired leases", extra={"count": total})
            self._on_due(0.0)
        return total

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            try:
                await self.reap()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("reaping failed: %s", exc)

    async def refresh_stats(self) -> None:
        async with self.pool.acquire() as conn:
            self.metrics.set_stats(await db.stats_read(conn))

    async def _stats_loop(self) -> None:
        # One cheap query on a timer, so a scrape never touches the database.
        while True:
            try:
                await self.refresh_stats()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("reading the gauges' figures failed: %s", exc)
            await asyncio.sleep(self.settings.stats_interval_seconds)

    def render_metrics(self) -> bytes:
        """This process's metrics, or with several processes behind one port, all of theirs."""
        own = self.metrics.render()
        if self.settings.metrics_dir is None:
            return own
        folder = Path(self.settings.metrics_dir)
        metrics_merge.write_snapshot(folder, own)
        return metrics_merge.merge(metrics_merge.read_snapshots(folder)).encode()

    async def _snapshot_loop(self) -> None:
        assert self.settings.metrics_dir is not None
        folder = Path(self.settings.metrics_dir)
        try:
            while True:
                metrics_merge.write_snapshot(folder, self.metrics.render())
                await asyncio.sleep(1.0)
        finally:
            # A process that stops takes its figures with it; the merge would drop them anyway.
            (folder / f"{os.getpid()}.prom").unlink(missing_ok=True)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                async with self.pool.acquire() as conn:
                    await db.request_nonce_prune(conn, self.settings.nonce_window_seconds * 2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("pruning nonces failed: %s", exc)
