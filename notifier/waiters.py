"""Registries of parked requests, woken by notifications.

A notification says how many jobs became ready for a tenant and queue; only as many waiters
as there may be jobs for are woken (by their batch capacity), oldest first: no thundering herd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable

from core import Backoff

ANY = "*"
# A wake-up with nothing returnable means a committed event waits for an older transaction to
# end, which sends no notification of its own: readers look again after a growing wait.
WITHHELD_RECHECK_FIRST_SECONDS = 0.05
WITHHELD_RECHECK_MAX_SECONDS = 1.0


def withheld_recheck() -> Backoff:
    return Backoff(WITHHELD_RECHECK_FIRST_SECONDS, WITHHELD_RECHECK_MAX_SECONDS)


class LeaseWaiter:
    __slots__ = ("capacity", "event", "queues", "tenant_id")

    def __init__(self, tenant_id: str | None, queues: frozenset[str], capacity: int) -> None:
        self.tenant_id = tenant_id  # None: a shared worker, any tenant will do
        self.queues = queues
        self.capacity = capacity
        self.event = asyncio.Event()

    def wants(self, tenant_id: str, queue: str) -> bool:
        tenant_ok = self.tenant_id is None or tenant_id == ANY or tenant_id == self.tenant_id
        return tenant_ok and (queue == ANY or queue in self.queues)


class LeaseWaiters:
    def __init__(self) -> None:
        # A dict keeps insertion order (FIFO) and removes in O(1).
        self._parked: dict[LeaseWaiter, None] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, tenant_id: str | None, queues: Collection[str], capacity: int) -> LeaseWaiter:
        w = LeaseWaiter(tenant_id, frozenset(queues), capacity)
        self._parked[w] = None
        return w

    def leave(self, w: LeaseWaiter) -> None:
        self._parked.pop(w, None)

    def wake(self, tenant_id: str, queue: str, n: int) -> int:
        """Wake parked waiters that can lease these jobs until their capacity covers `n`."""
        woken = 0
        for w in list(self._parked):
            if n <= 0:
                break
            if w.wants(tenant_id, queue):
                del self._parked[w]
                w.event.set()
                n -= w.capacity
                woken += 1
        return woken

    def wake_all(self) -> int:
        woken = len(self._parked)
        for w in self._parked:
            w.event.set()
        self._parked.clear()
        return woken


class JobWaiters:
    """Requests waiting for a job to reach a terminal state."""

    def __init__(self) -> None:
        self._by_job: dict[int, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_job.values())

    def park(self, job_id: int) -> asyncio.Event:
        ev = asyncio.Event()
        self._by_job.setdefault(job_id, set()).add(ev)
        return ev

    def leave(self, job_id: int, ev: asyncio.Event) -> None:
        waiting = self._by_job.get(job_id)
        if waiting is not None:
            waiting.discard(ev)
            if not waiting:
                del self._by_job[job_id]

    def wake(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            for ev in self._by_job.pop(job_id, ()):
                ev.set()

    def wake_all(self) -> None:
        for waiting in self._by_job.values():
            for ev in waiting:
                ev.set()
        self._by_job.clear()


class EventWaiters:
    """Long-polls, streams and publishers waiting for a tenant's events to commit.

    Parking under `None` waits for any tenant's events. A wake releases everyone parked for
    the tenants named (and every `None` waiter); they read, then park again for the next.
    """

    def __init__(self) -> None:
        self._by_tenant: dict[str | None, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_tenant.values())

    def park(self, tenant_id: str | None) -> asyncio.Event:
        ev = asyncio.Event()
        self._by_tenant.setdefault(tenant_id, set()).add(ev)
        return ev

    def leave(self, tenant_id: str | None, ev: asyncio.Event) -> None:
        waiting = self._by_tenant.get(tenant_id)
        if waiting is not None:
            waiting.discard(ev)
            if not waiting:
                del self._by_tenant[tenant_id]

    def wake(self, tenant_ids: Iterable[str]) -> None:
        any_woken = False
        for tenant_id in tenant_ids:
            any_woken = True
            for ev in self._by_tenant.pop(tenant_id, ()):
                ev.set()
        if any_woken:
            for ev in self._by_tenant.pop(None, ()):
                ev.set()

    def wake_all(self) -> None:
        for waiting in self._by_tenant.values():
            for ev in waiting:
                ev.set()
        self._by_tenant.clear()
