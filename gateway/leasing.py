"""Long-poll leasing: try at once, park on the notifier when nothing is leasable, retry on wake."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

import db
from core.wire import LeasedJob, LeaseRequest

from .runtime import Runtime

log = logging.getLogger("orchestrator.leasing")

# How many tenants one shared lease considers before giving up on this round.
CANDIDATES = 8
# How far (in jobs of weight 1) a tenant's pass may trail the leader's: the head start an idle or
# new tenant gets, instead of taking every worker until its pass catches up.
JOIN_CREDIT = 10.0
# Share of lease rounds that take the oldest ready jobs regardless of priority, so that a steady
# stream of high-priority work cannot starve low priorities.
FIFO_SHARE = 0.1


class Leaser:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._forgetting: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Let pending forgets finish, so none is cut off at shutdown."""
        await asyncio.gather(*self._forgetting, return_exceptions=True)

    def _forget_soon(self, tenant_id: str, queues: list[str]) -> None:
        task = asyncio.create_task(self._forget(tenant_id, queues))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget(self, tenant_id: str, queues: list[str]) -> None:
        try:
            async with self._rt.pool.acquire() as conn:
                await db.runnable_queue_forget(conn, tenant_id, queues)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("forgetting an emptied queue failed: %s", exc)  # the next empty lease forgets it

    async def lease(
        self, tenant_id: str | None, req: LeaseRequest, disconnected: asyncio.Future[object] | None = None
    ) -> list[LeasedJob]:
        rt = self._rt
        waiters = rt.notifier.lease_waiters
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + req.wait_ms / 1000
        outcome = "timeout"
        try:
            while True:
                # Park before trying, so a notification that lands during the attempt is not lost.
                waiter = waiters.park(tenant_id, req.queues, req.max_jobs)
                try:
                    jobs = await self._attempt(tenant_id, req)
                    if jobs:
                        outcome = "jobs"
                        if waiter.event.is_set() or len(jobs) == req.max_jobs:
                            # We may have taken a wake-up meant for others, or left work behind.
                            for q in req.queues:
                                if waiters.wake(jobs[0].tenant_id, q, 1):
                                    break
                        return jobs
                    remaining = deadline - loop.time()
                    if rt.draining.is_set():
                        outcome = "shutdown"
                        return []
                    if remaining <= 0:
                        outcome = "empty" if req.wait_ms == 0 else "timeout"
                        return []
                    wait_for: list[asyncio.Future[object]] = [asyncio.ensure_future(waiter.event.wait())]
                    if disconnected is not None:
                        wait_for.append(disconnected)
                    await asyncio.wait(wait_for, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                    wait_for[0].cancel()
                    if disconnected is not None and disconnected.done():
                        outcome = "disconnected"
                        return []
                    if rt.draining.is_set():
                        outcome = "shutdown"
                        return []
                finally:
                    waiters.leave(waiter)
        finally:
            rt.metrics.lease_requests.add(1, {"outcome": outcome})
            rt.metrics.long_poll_wait.record(loop.time() - started)

    async def release(self, jobs: list[LeasedJob]) -> None:
        """Give leased jobs back at once, without counting the attempt (a snooze of 0 ms)."""
        rt = self._rt
        items = [
            db.FailItem(
                job_id=int(j.id),
                lease_token=j.lease_token,
                error="released: the lease request's client went away",
                retryable=True,
                retry_in_ms=0,
                snooze=True,
            )
            for j in jobs
        ]
        async with rt.pool.acquire() as conn:
            await db.job_fail_many(
                conn, items, None, base_ms=rt.settings.retry_base_ms, cap_ms=rt.settings.retry_cap_ms
            )
        rt.metrics.jobs_released.add(len(items))
        rt.due.hint(0.0)
        log.info("released jobs leased to a client that went away", extra={"count": len(items)})

    async def _attempt(self, tenant_id: str | None, req: LeaseRequest) -> list[LeasedJob]:
        # The starvation guard: some rounds take the oldest jobs whatever their priority.
        fifo = random.random() < FIFO_SHARE
        t0 = time.perf_counter()
        try:
            async with self._rt.pool.acquire() as conn:
                if tenant_id is not None:
                    jobs = await self._lease_tenant(conn, tenant_id, req, req.max_jobs, None, fifo)
                else:
                    jobs = await self._lease_shared(conn, req, fifo)
        finally:
            self._rt.metrics.lease_statement.record(time.perf_counter() - t0)
        if jobs:
            self._rt.metrics.leased(jobs)
        return jobs

    async def _lease_shared(self, conn: db.Conn, req: LeaseRequest, fifo: bool) -> list[LeasedJob]:
        leased: list[LeasedJob] = []
        candidates = await db.tenant_pick(conn, req.queues, CANDIDATES)
        if not candidates:
            return leased
        floor = candidates[0].lead_pass - JOIN_CREDIT
        for c in candidates:
            got = await self._lease_tenant(conn, c.tenant_id, req, req.max_jobs - len(leased), floor, fifo)
            if not got:
                # Its ready jobs are gone (or all locked by other leases): stop offering it.
                await db.runnable_queue_forget(conn, c.tenant_id, req.queues)
            elif len(got) < req.max_jobs - len(leased):
                # This lease likely took its last ready jobs: forget the pair now, after answering,
                # so the next lease does not pay a lease statement to find that out.
                self._forget_soon(c.tenant_id, req.queues)
            leased += got
            if len(leased) >= req.max_jobs:
                break
        return leased

    async def _lease_tenant(
        self, conn: db.Conn, tenant_id: str, req: LeaseRequest, limit: int, pass_floor: float | None, fifo: bool
    ) -> list[LeasedJob]:
        lease_seconds = min(req.lease_seconds, self._rt.settings.max_lease_seconds)
        return await db.job_lease(
            conn, tenant_id, req.queues, limit, lease_seconds, req.worker_id, pass_floor=pass_floor, fifo=fifo
        )


def watch_disconnect(receive: Callable[[], Awaitable[Any]]) -> asyncio.Future[object]:
    """A future that completes when the client goes away (the ASGI http.disconnect message)."""

    # After the body is read, the next ASGI message is the disconnect (or the end of the response).
    async def wait() -> object:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return message

    return asyncio.ensure_future(wait())


def cancel(fut: asyncio.Future[object] | None) -> None:
    if fut is not None and not fut.done():
        fut.cancel()
        with contextlib.suppress(BaseException):
            fut.exception()


__all__ = ["Leaser", "cancel", "watch_disconnect"]
