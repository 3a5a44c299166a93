"""What one gateway process holds: pool, notifier, metrics, tracing, and the supervision of its
background services (the services themselves are in `gateway.services`)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from core import Backoff, Settings
from notifier import Notifier

from .keycache import SecretCache
from .telemetry.metrics import QUEUE_LABELS_FILE, Metrics
from .telemetry.tracing import Tracing

log = logging.getLogger("orchestrator.gateway")

# A crashed service is restarted after a backoff from this up to the cap; one that ran this long
# before crashing starts its backoff afresh.
RESTART_BASE_SECONDS = 0.5
RESTART_CAP_SECONDS = 30.0
HEALTHY_RUN_SECONDS = 60.0
# After this many crashes in a row, /readyz reports the service as failing.
FAILING_AFTER_CRASHES = 3


# Every runtime of this process, so a shutdown signal can reach them (see `begin_drain_all`).
_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


def begin_drain_all() -> None:
    """The server begins a graceful shutdown: every parked request of this process answers now.

    Safe to call from a signal handler: the work is handed to each runtime's event loop.
    """
    for rt in list(_live):
        if rt.loop is not None and not rt.loop.is_closed():
            rt.loop.call_soon_threadsafe(rt.begin_drain)


@dataclass(frozen=True)
class Service:
    """A background loop of the gateway: `run` never returns until cancelled."""

    name: str
    run: Callable[[Runtime], Awaitable[None]]


class DueHint:
    """The nearest wall-clock time at which a delayed job falls due, as heard from the notifier
    and from this process's own writes; the promoter sleeps until it."""

    def __init__(self) -> None:
        self.at = 0.0  # monotonic time of the next promotion
        self.changed = asyncio.Event()

    def hint(self, epoch: float) -> None:
        at = time.monotonic() + max(0.0, epoch - time.time())
        if at < self.at:
            self.at = at
            self.changed.set()


class Runtime:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, dsn: str) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = Metrics(tenant_label=settings.metrics_tenant_label)
        if settings.metrics_dir is not None:
            # The processes behind one port agree on which queue names get a label from the start.
            self.metrics.queue_labels.share(Path(settings.metrics_dir) / QUEUE_LABELS_FILE)
        self.key_secrets = SecretCache()
        self.tracing = Tracing(settings.traces)
        self.due = DueHint()
        self.notifier = Notifier(
            settings.listen_url or dsn,
            pool,
            safety_poll_seconds=settings.safety_poll_seconds,
            enabled=settings.notifier_enabled,
            on_due=self.due.hint,
            on_notification=lambda ch: self.metrics.notifications.add(1, {"channel": ch}),
            on_reconnect=lambda: self.metrics.listen_reconnects.add(1),
        )
        # Set once the server begins to shut down: long-polls and streams answer at once.
        self.draining = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._crashes: dict[str, int] = {}  # consecutive crashes by service name
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
        self.metrics.observe_gauge(
            "orch_services_failing",
            "Background services that crashed several times in a row",
            lambda: float(len(self.failing_services())),
        )

    async def start(self, services: Sequence[Service]) -> None:
        self.loop = asyncio.get_running_loop()
        _live.add(self)
        await self.notifier.start()
        for s in services:
            self.supervise(s)

    def supervise(self, service: Service) -> None:
        """Run `service` until `stop()`, restarting it whenever it crashes."""
        self._tasks.append(asyncio.create_task(self._supervise(service), name=service.name))

    def begin_drain(self) -> None:
        if self.draining.is_set():
            return
        log.info("shutting down: answering parked long-polls")
        self.draining.set()
        self.notifier.lease_waiters.wake_all()
        self.notifier.job_waiters.wake_all()
        self.notifier.event_waiters.wake_all()

    async def stop(self) -> None:
        self.begin_drain()
        _live.discard(self)
        for t in self._tasks:
            t.cancel()
        # A task's own failure must not keep the notifier and exporters from stopping.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.notifier.stop()
        self.metrics.shutdown()
        self.tracing.shutdown()

    def failing_services(self) -> list[str]:
        return sorted(name for name, n in self._crashes.items() if n >= FAILING_AFTER_CRASHES)

    async def _supervise(self, service: Service) -> None:
        """Run a service for good: a crash is logged, counted, and followed by a restart."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(RESTART_BASE_SECONDS, RESTART_CAP_SECONDS)
        self._crashes[service.name] = 0

        def recovered() -> None:
            backoff.reset()
            self._crashes[service.name] = 0

        while True:
            # A run that lasts this long counts as healthy again, whatever came before.
            healthy = loop.call_later(HEALTHY_RUN_SECONDS, recovered)
            try:
                await service.run(self)
                error = "returned"
                log.error("background service %s returned; restarting it", service.name)
            except Exception as exc:
                error = type(exc).__name__
                log.exception("background service %s crashed; restarting it", service.name)
            finally:
                healthy.cancel()
            self._crashes[service.name] += 1
            self.metrics.service_restarts.add(1, {"service": service.name, "error": error})
            await asyncio.sleep(backoff.next())
