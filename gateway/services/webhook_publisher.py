"""The webhook publisher: every gateway process runs one, delivering events to tenants' endpoints.

An endpoint is delivered by one process at a time, in order: the process holds a session-level
advisory lock on it while it POSTs, re-reads the endpoint's cursor once the lock is held, and
moves the cursor after each delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref

import aiohttp
import msgspec

import db
from core.signing import (
    WEBHOOK_EVENT_ID_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    webhook_signature,
)
from core.wire import Event
from notifier import withheld_recheck

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

DELIVERY_BATCH = 100
# An endpoint locked by another gateway is left to it for this long before this one looks again.
BUSY_RETRY_SECONDS = 1.0
# Notifications come with every committed event; rounds are at least this far apart.
MIN_ROUND_SECONDS = 0.02
MAX_ERROR_CHARS = 500
USER_AGENT = "job-orchestrator-webhooks/1"

_encode = msgspec.json.Encoder().encode

# The publisher of each runtime, so routes that change an endpoint can wake it.
_publishers: weakref.WeakKeyDictionary[Runtime, WebhookPublisher] = weakref.WeakKeyDictionary()


def kick(rt: Runtime) -> None:
    """Have this process's publisher look for work now (other processes find it by their poll)."""
    publisher = _publishers.get(rt)
    if publisher is not None:
        publisher.kick()


class Attempt(msgspec.Struct, frozen=True):
    ok: bool
    status: int | None
    error: str | None


class WebhookPublisher:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._kick = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy_until: dict[int, float] = {}  # endpoints another gateway is delivering
        self._active = True  # whether the last round saw an active endpoint
        self._recheck = withheld_recheck()
        self._session: aiohttp.ClientSession | None = None

    def kick(self) -> None:
        """Look for work now rather than at the next notification."""
        self._kick.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        settings = self._rt.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, settings.webhook_concurrency) * 2),
            # Receivers belong to different tenants: no cookies, no proxy settings from the environment.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        _publishers[self._rt] = self
        try:
            await self._loop()
        finally:
            _publishers.pop(self._rt, None)
            tasks = list(self._inflight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    async def _loop(self) -> None:
        waiters = self._rt.notifier.event_waiters
        while True:
            self._kick.clear()
            # With no active endpoint there is nothing to wake for but a kick or the backstop poll.
            woken = waiters.park(None) if self._active else None
            try:
                try:
                    wait = await self._round()
                except DB_ERRORS as exc:
                    log.warning("webhook publisher round failed: %r", exc)
                    wait = self._rt.settings.webhook_poll_seconds
                waits = [asyncio.ensure_future(self._kick.wait())]
                if woken is not None:
                    waits.append(asyncio.ensure_future(woken.wait()))
                try:
                    await asyncio.wait(waits, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            finally:
                if woken is not None:
                    waiters.leave(None, woken)
            await asyncio.sleep(MIN_ROUND_SECONDS)

    async def _round(self) -> float:
        """Start deliveries for due endpoints; returns how long to wait before the next round."""
        settings = self._rt.settings
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._busy_until = {k: t for k, t in self._busy_until.items() if t > now}
        free = settings.webhook_concurrency - len(self._inflight)
        async with self._rt.pool.acquire() as conn:
            due = await db.webhook_due(conn, free, [*self._inflight, *self._busy_until]) if free > 0 else []
            activity = await db.webhook_activity(conn)
        for webhook_id in due:
            task = asyncio.create_task(self._deliver(webhook_id), name=f"webhook-{webhook_id}")
            self._inflight[webhook_id] = task
        self._active = activity.active
        wait = settings.webhook_poll_seconds
        if activity.next_retry_in is not None:
            wait = min(wait, activity.next_retry_in)
        if self._busy_until:
            wait = min(wait, min(self._busy_until.values()) - now)
        if activity.withheld and not due:
            wait = min(wait, self._recheck.next())
        else:
            self._recheck.reset()
        return wait

    async def _deliver(self, webhook_id: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._rt.pool.acquire() as conn:
                if not await db.webhook_try_lock(conn, webhook_id):
                    self._busy_until[webhook_id] = loop.time() + BUSY_RETRY_SECONDS
                    return
                try:
                    await self._deliver_locked(conn, webhook_id)
                finally:
                    # Releasing the connection to the pool also drops its advisory locks.
                    with contextlib.suppress(*DB_ERRORS):
                        await db.webhook_unlock(conn, webhook_id)
        except DB_ERRORS as exc:
            log.warning("webhook %d: database unreachable: %r", webhook_id, exc)
            self._busy_until[webhook_id] = loop.time() + BUSY_RETRY_SECONDS
        except Exception:
            # The publisher outlives whatever one endpoint runs into, and leaves that one be a while.
            log.exception("webhook %d: delivery failed", webhook_id)
            self._busy_until[webhook_id] = loop.time() + BUSY_RETRY_SECONDS
        finally:
            self._inflight.pop(webhook_id, None)
            self._kick.set()

    async def _deliver_locked(self, conn: db.Conn, webhook_id: int) -> None:
        """Deliver the endpoint's next events in order until one fails or the batch is done."""
        settings = self._rt.settings
        metrics = self._rt.metrics
        hook = await db.webhook_claim(conn, webhook_id)
        if hook is None:
            return
        page = await db.event_read(conn, hook.tenant_id, hook.cursor, DELIVERY_BATCH)
        if page.gone:
            log.warning("webhook %d: events after %s were pruned before delivery", webhook_id, hook.cursor)
            metrics.webhook_deliveries.add(1, {"outcome": "pruned"})
            page = await db.event_read(conn, hook.tenant_id, None, DELIVERY_BATCH)
        stored = hook.cursor
        position = page.start
        for cursor, event in zip(page.cursors, page.events, strict=True):
            if hook.event_types and event.type.value not in hook.event_types:
                position = cursor
                continue
            attempt = await self._post(hook, event)
            if attempt.ok and attempt.status is not None:
                await db.webhook_delivered(conn, webhook_id, cursor, attempt.status)
                metrics.webhook_deliveries.add(1, {"outcome": "delivered"})
                stored = position = cursor
                continue
            outcome = await db.webhook_failed(
                conn,
                webhook_id,
                position,
                status=attempt.status,
                error=(attempt.error or "failed")[:MAX_ERROR_CHARS],
                base_ms=settings.webhook_retry_base_ms,
                cap_ms=settings.webhook_retry_cap_ms,
                # Half the ceiling at least, so successive waits keep growing.
                jitter=0.5 + random.random() / 2,
                max_attempts=settings.webhook_max_attempts,
            )
            state, attempts = outcome or ("deleted", 0)
            metrics.webhook_deliveries.add(1, {"outcome": "parked" if state == "parked" else "failed"})
            if state == "parked":
                log.warning("webhook %d parked after %d failed attempts: %s", webhook_id, attempts, attempt.error)
            return
        if position != stored:
            await db.webhook_advance(conn, webhook_id, position)

    async def _post(self, hook: db.WebhookRow, event: Event) -> Attempt:
        if self._session is None:
            raise RuntimeError("the webhook publisher is not running")
        timeout = self._rt.settings.webhook_timeout_seconds
        body = _encode(event)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_ID_HEADER: str(hook.id),
            WEBHOOK_EVENT_ID_HEADER: event.id,
            WEBHOOK_TIMESTAMP_HEADER: timestamp,
            WEBHOOK_SIGNATURE_HEADER: webhook_signature(hook.secret, timestamp, body),
        }
        t0 = time.perf_counter()
        try:
            async with self._session.post(
                hook.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if 200 <= resp.status < 300:
                    return Attempt(True, resp.status, None)
                text = (await resp.content.read(200)).decode("utf-8", "replace").strip()
                return Attempt(False, resp.status, f"HTTP {resp.status}" + (f": {text}" if text else ""))
        except TimeoutError:
            return Attempt(False, None, f"no answer within {timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {exc}")
        finally:
            self._rt.metrics.webhook_duration.record(time.perf_counter() - t0)


async def run_webhook_publisher(rt: Runtime) -> None:
    """The webhook publisher of this gateway process, until cancelled."""
    await WebhookPublisher(rt).run()
