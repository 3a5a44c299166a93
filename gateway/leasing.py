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


# The most requests one lease statement serves; a larger wake-up takes several.
MAX_GROUP = 250

_GroupKey = tuple[str | None, tuple[str, ...], int]  # tenant (None: shared), queues, lease seconds
_Member = tuple[LeaseRequest, "asyncio.Future[list[LeasedJob]]"]


class Leaser:
    """Leases for long-polls. Requests that try in the same turn of the event loop — typically
    the parked polls one notification wakes — are leased together by one statement, each job
    naming the worker it is for."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._background: set[asyncio.Task[None]] = set()
        self._forming: dict[_GroupKey, list[_Member]] = {}

    async def close(self) -> None:
        """Let pending group leases and forgets finish, so none is cut off at shutdown."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget_soon(self, tenant_id: str, queues: list[str]) -> None:
        self._track(asyncio.create_task(self._forget(tenant_id, queues)))

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
        """Lease for this request, together with every other request of the same kind that
        tries in the same turn of the event loop: one statement for all of them."""
        lease_seconds = min(req.lease_seconds, self._rt.settings.max_lease_seconds)
        key = (tenant_id, tuple(req.queues), lease_seconds)
        loop = asyncio.get_running_loop()
        got: asyncio.Future[list[LeasedJob]] = loop.create_future()
        group = self._forming.get(key)
        if group is None:
            group = self._forming[key] = []
            # Runs after the requests woken with this one have joined.
            self._track(loop.create_task(self._lease_group(key, group)))
        group.append((req, got))
        return await got

    async def _lease_group(self, key: _GroupKey, group: list[_Member]) -> None:
        tenant_id, queues, lease_seconds = key
        del self._forming[key]
        try:
            for start in range(0, len(group), MAX_GROUP):
                await self._lease_for(tenant_id, list(queues), lease_seconds, group[start : start + MAX_GROUP])
        except BaseException as exc:
            for _, got in group:
                if not got.done():
                    got.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _lease_for(
        self, tenant_id: str | None, queues: list[str], lease_seconds: int, group: list[_Member]
    ) -> None:
        slots = [req.worker_id for req, _ in group for _ in range(req.max_jobs)]
        # The starvation guard: some rounds take the oldest jobs whatever their priority.
        fifo = random.random() < FIFO_SHARE
        t0 = time.perf_counter()
        try:
            async with self._rt.pool.acquire() as conn:
                if tenant_id is not None:
                    jobs = await db.job_lease(conn, tenant_id, queues, slots, lease_seconds, fifo=fifo)
                else:
                    jobs = await self._lease_shared(conn, queues, slots, lease_seconds, fifo)
        finally:
            self._rt.metrics.lease_statement.record(time.perf_counter() - t0)
        # Each job goes to a request of the worker its slot named, up to what that request asked.
        by_worker: dict[str, list[LeasedJob]] = {}
        for worker_id, job in jobs:
            by_worker.setdefault(worker_id, []).append(job)
        orphans: list[LeasedJob] = []
        for req, got in group:
            mine = by_worker.get(req.worker_id, [])
            take, by_worker[req.worker_id] = mine[: req.max_jobs], mine[req.max_jobs :]
            if got.done():  # its request went away while the statement ran
                orphans += take
                continue
            if take:
                self._rt.metrics.leased(take)
            got.set_result(take)
        if orphans:
            await self.release(orphans)

    async def _lease_shared(
        self, conn: db.Conn, queues: list[str], slots: list[str], lease_seconds: int, fifo: bool
    ) -> list[tuple[str, LeasedJob]]:
        leased = await db.job_lease_shared(
            conn, queues, slots, lease_seconds, candidates=CANDIDATES, join_credit=JOIN_CREDIT, fifo=fifo
        )
        # Every tenant but the last leased fewer than it was offered, and the last did too when the
        # slots are not all filled: each likely took its last ready jobs. Forget those pairs now,
        # after answering, so the next lease does not pay a statement to find that out.
        tenants = list(dict.fromkeys(job.tenant_id for _, job in leased))
        if tenants and len(leased) == len(slots):
            tenants.pop()
        for tenant_id in tenants:
            self._forget_soon(tenant_id, queues)
        return leased


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
