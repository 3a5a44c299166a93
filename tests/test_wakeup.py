"""Long-poll leases park on the notifier and wake when work exists, without busy polling."""

from __future__ import annotations

import asyncio
import time

import pytest

from core import Settings
from notifier import LeaseWaiters

from .support import Api, InProcessGateway, eventually, running

pytestmark = pytest.mark.timeout(60)


async def test_parked_lease_wakes_within_a_second_of_a_submit(api: Api, gateway: InProcessGateway) -> None:
    key = await api.tenant("tenant-a")
    lease = asyncio.create_task(api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 30_000}))

    async def parked() -> bool:
        return len(gateway.runtime.notifier.lease_waiters) == 1

    await eventually(parked, timeout=5)
    t0 = time.monotonic()
    submitted = await api.signed(key, "POST", "/v1/jobs", {"payload": {"n": 1}})
    r = await asyncio.wait_for(lease, 5)
    elapsed = time.monotonic() - t0
    assert r.status == 200 and [j["id"] for j in r.body["jobs"]] == [submitted.body["id"]]
    assert elapsed < 1.0, f"woke after {elapsed:.3f} s"


async def test_parked_lease_with_nothing_to_do_returns_empty_after_wait_ms(api: Api) -> None:
    key = await api.tenant("tenant-a")
    t0 = time.monotonic()
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 700})
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.body == {"jobs": []}
    assert 0.65 <= elapsed < 3.0, elapsed


async def test_a_notification_wakes_only_as_many_waiters_as_there_are_jobs() -> None:
    waiters = LeaseWaiters()
    parked = [waiters.park(None, ["default"], 1) for _ in range(10)]
    other_queue = waiters.park(None, ["emails"], 5)
    pinned_elsewhere = waiters.park("tenant-b", ["default"], 5)
    assert waiters.wake("tenant-a", "default", 3) == 3
    assert [w.event.is_set() for w in parked] == [True] * 3 + [False] * 7
    assert not other_queue.event.is_set() and not pinned_elsewhere.event.is_set()
    # a batch-capable waiter covers several jobs on its own
    big = waiters.park("tenant-a", ["default"], 50)
    for w in parked[3:]:
        waiters.leave(w)
    assert waiters.wake("tenant-a", "default", 40) == 1 and big.event.is_set()
    assert len(waiters) == 2


async def test_many_parked_workers_one_job_wakes_one(api: Api, gateway: InProcessGateway) -> None:
    key = await api.tenant("tenant-a")
    leases = [
        asyncio.create_task(api.signed(key, "POST", "/v1/workers/lease", {"worker_id": f"w{i}", "wait_ms": 3000}))
        for i in range(8)
    ]

    async def all_parked() -> bool:
        return len(gateway.runtime.notifier.lease_waiters) == 8

    await eventually(all_parked, timeout=5)
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})

    async def one_gone() -> bool:
        return len(gateway.runtime.notifier.lease_waiters) == 7

    await eventually(one_gone, timeout=2)
    results = await asyncio.gather(*leases)
    assert sorted(len(r.body["jobs"]) for r in results) == [0] * 7 + [1]


async def test_without_notifications_the_safety_poll_still_delivers(settings: Settings) -> None:
    import msgspec

    quiet = msgspec.structs.replace(settings, notifier_enabled=False, safety_poll_seconds=0.5)
    async with running(InProcessGateway(quiet)) as gw:
        client = Api(gw.url, settings.admin_token or "")
        try:
            key = await client.tenant("tenant-a")
            lease = asyncio.create_task(
                client.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 10_000})
            )

            async def parked() -> bool:
                return len(gw.runtime.notifier.lease_waiters) == 1

            # parked first, so only a poll can find the job: no notification will come
            await eventually(parked, timeout=5)
            job = (await client.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
            # the poll runs every 0.4 to 0.6 s; the lease's own deadline is 10 s away
            r = await asyncio.wait_for(lease, 5)
            assert [j["id"] for j in r.body["jobs"]] == [job["id"]]
        finally:
            await client.close()


async def test_delayed_job_waits_then_wakes_the_parked_lease(api: Api) -> None:
    key = await api.tenant("tenant-a")
    lease = asyncio.create_task(api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 10_000}))
    t0 = time.monotonic()
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "delay_ms": 400})).body
    assert job["state"] == "scheduled"
    r = await asyncio.wait_for(lease, 8)
    elapsed = time.monotonic() - t0
    assert [j["id"] for j in r.body["jobs"]] == [job["id"]]
    assert 0.35 <= elapsed < 2.0, elapsed


async def test_get_with_wait_returns_when_the_job_finishes(api: Api, gateway: InProcessGateway) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    waiting = asyncio.create_task(api.signed(key, "GET", f"/v1/jobs/{job['id']}?wait_ms=20000"))
    leased = (await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0})).body["jobs"][0]

    async def parked() -> bool:
        return len(gateway.runtime.notifier.job_waiters) == 1

    await eventually(parked, timeout=5)
    assert not waiting.done()
    t0 = time.monotonic()
    await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": leased["lease_token"], "result": 1})
    r = await asyncio.wait_for(waiting, 5)
    assert r.body["state"] == "succeeded" and time.monotonic() - t0 < 1.0
    # and without finishing, it answers after wait_ms with the current state
    other = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    r = await api.signed(key, "GET", f"/v1/jobs/{other['id']}?wait_ms=300")
    assert r.body["state"] == "ready"
