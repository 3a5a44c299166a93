"""The SDK's management calls against a real gateway: a tenant's schedules, retry policies,
queues, consumers and webhooks (`ProducerClient` and its blocking twin), the operator's
`AdminClient`, `wait()` timing out, and what a `WorkerClient`'s `tenant_id` allows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from core import JobState, Settings
from core.states import EventType
from core.wire import QueueState, RetryPolicyOut
from examples import typed_usage
from sdk import (
    AdminClient,
    Conflict,
    Forbidden,
    NotFound,
    ProducerClient,
    SyncProducerClient,
    Unauthorized,
    WaitTimeout,
    WorkerClient,
)

from .support import Api, eventually, free_port


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No background reaper: `AdminClient.reap` is then the only thing that recovers leases.
    # Webhooks may point at loopback, where the tests' endpoints are.
    return msgspec.structs.replace(settings, reap_interval_seconds=3600.0, webhook_allow_hosts=("127.0.0.1",))


@pytest.fixture
async def key(api: Api) -> str:
    return await api.tenant("tenant-a")


@pytest.fixture
async def producer(api: Api, key: str) -> AsyncIterator[ProducerClient]:
    async with ProducerClient(api.url, api_key=key) as p:
        yield p


@pytest.fixture
async def admin(api: Api) -> AsyncIterator[AdminClient]:
    async with AdminClient(api.url, admin_token=api.admin_token) as a:
        yield a


def _hook_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: deliveries just fail


# --- the tenant's resources ----------------------------------------------------------------


async def test_schedules(producer: ProducerClient) -> None:
    s = producer.schedules
    created = await s.create(
        "nightly",
        "0 3 * * *",
        timezone="Europe/Paris",
        queue="reports",
        kind="report",
        payload={"a": 1},
        max_attempts=4,
    )
    assert (created.name, created.tenant_id, created.timezone, created.max_attempts) == (
        "nightly",
        "tenant-a",
        "Europe/Paris",
        4,
    )
    with pytest.raises(Conflict):
        await s.create("nightly", "0 3 * * *")
    assert [x.name for x in await s.list()] == ["nightly"]
    assert (await s.get("nightly")).payload == {"a": 1}
    changed = await s.update("nightly", priority=9, max_attempts=None)
    assert (changed.priority, changed.max_attempts, changed.cron, changed.kind) == (9, None, "0 3 * * *", "report")
    assert (await s.pause("nightly")).paused is True
    resumed = await s.resume("nightly")
    assert resumed.paused is False
    renamed = await s.update("nightly", rename="daily", cron="0 4 * * *")
    assert (renamed.name, renamed.cron, renamed.priority) == ("daily", "0 4 * * *", 9)
    with pytest.raises(NotFound):
        await s.get("nightly")
    await s.delete("daily")
    assert await s.list() == []
    with pytest.raises(NotFound):
        await s.delete("daily")


async def test_retry_policies_apply_to_new_jobs(producer: ProducerClient) -> None:
    rp = producer.retry_policies
    assert await rp.get() == RetryPolicyOut(queue=None)
    assert await rp.set(max_attempts=7) == RetryPolicyOut(queue=None, max_attempts=7)
    assert await rp.set("mail", max_attempts=2, retry_base_ms=10) == RetryPolicyOut(
        queue="mail", max_attempts=2, retry_base_ms=10
    )
    assert (await rp.get("mail")).retry_base_ms == 10
    assert (await producer.submit({}, queue="mail")).max_attempts == 2
    assert (await producer.submit({}, queue="other")).max_attempts == 7
    await rp.delete("mail")
    assert await rp.get("mail") == RetryPolicyOut(queue="mail")
    assert (await producer.submit({}, queue="mail")).max_attempts == 7
    with pytest.raises(NotFound):
        await rp.delete("mail")


async def test_pausing_queues(api: Api, key: str, producer: ProducerClient) -> None:
    assert await producer.queues.paused() == []
    assert await producer.queues.pause("mail") == QueueState(tenant_id="tenant-a", queue="mail", paused=True)
    assert await producer.queues.paused() == ["mail"]
    job = await producer.submit({}, queue="mail")
    async with WorkerClient(api.url, worker_id="w", api_key=key, queues=("mail",)) as worker:
        assert await worker.lease(wait_ms=0) == []
        assert (await producer.queues.resume("mail")).paused is False
        assert [j.id for j in await worker.lease(wait_ms=5000)] == [job.id]
    assert await producer.queues.paused() == []


async def test_consumers(producer: ProducerClient) -> None:
    c = producer.consumers
    first = await c.create("audit")
    with pytest.raises(Conflict):
        await c.create("audit")
    assert (await c.create("audit", exist_ok=True)).cursor == first.cursor
    job = await producer.submit({"n": 1})
    page = await c.read("audit", wait_ms=5000)
    assert [(e.type, e.job_id) for e in page.events] == [(EventType.CREATED, job.id)]
    assert (await c.read("audit")).events == page.events  # reading does not move it
    assert (await c.ack("audit", page.next)).cursor == page.next
    assert (await c.read("audit")).events == []
    late = await c.create("late", "latest")
    assert (await c.read("late")).events == []
    assert sorted(x.name for x in await c.list()) == ["audit", "late"]
    assert (await c.get("late")).cursor == late.cursor
    await c.delete("audit")
    with pytest.raises(NotFound):
        await c.get("audit")
    with pytest.raises(NotFound):
        await c.delete("audit")


async def test_webhooks(producer: ProducerClient) -> None:
    w = producer.webhooks
    hook = await w.create(_hook_url(), event_types=["job.succeeded", "job.dead"])
    assert hook.secret is not None and hook.secret.startswith("whsec_")
    assert hook.event_types == [EventType.SUCCEEDED, EventType.DEAD]
    mine = await w.create(_hook_url(), secret="s" * 20)
    assert mine.secret is None  # only a generated secret is shown
    assert [x.id for x in await w.list()] == [hook.id, mine.id]
    got = await w.get(hook.id)
    assert (got.url, got.secret, got.state) == (hook.url, None, "active")
    assert (await w.resume(hook.id)).state == "active"
    await w.delete(hook.id)
    with pytest.raises(NotFound):
        await w.get(hook.id)
    with pytest.raises(NotFound):
        await w.resume(hook.id)
    assert [x.id for x in await w.list()] == [mine.id]


@pytest.mark.timeout(60)
async def test_the_blocking_client_has_the_same_namespaces(api: Api, key: str) -> None:
    def script() -> dict[str, Any]:
        with SyncProducerClient(api.url, api_key=key) as p:
            out: dict[str, Any] = {}
            p.schedules.create("s", "0 0 1 1 *", paused=True)
            out["schedule"] = p.schedules.update("s", kind="k").kind
            out["schedule_paused"] = p.schedules.resume("s").paused
            p.schedules.delete("s")
            out["schedules"] = p.schedules.list()
            out["policy"] = p.retry_policies.set("q", max_attempts=3).max_attempts
            p.retry_policies.delete("q")
            p.queues.pause("q")
            out["paused"] = p.queues.paused()
            p.queues.resume("q")
            p.consumers.create("c")
            job = p.submit({}, queue="q")
            page = p.consumers.read("c", wait_ms=5000)
            out["events"] = [e.job_id for e in page.events] == [job.id]
            out["acked"] = p.consumers.ack("c", page.next).cursor == page.next
            out["consumers"] = [c.name for c in p.consumers.list()]
            p.consumers.delete("c")
            hook = p.webhooks.create(_hook_url())
            out["hooks"] = [h.id for h in p.webhooks.list()] == [hook.id] == [p.webhooks.get(hook.id).id]
            p.webhooks.delete(hook.id)
            with pytest.raises(WaitTimeout) as timed_out:
                p.wait(job.id, timeout_s=0.2)
            out["waited"] = timed_out.value.job.state
            return out

    out = await asyncio.to_thread(script)
    assert out == {
        "schedule": "k",
        "schedule_paused": False,
        "schedules": [],
        "policy": 3,
        "paused": ["q"],
        "events": True,
        "acked": True,
        "consumers": ["c"],
        "hooks": True,
        "waited": JobState.READY,
    }


# --- wait() --------------------------------------------------------------------------------


async def test_wait_raises_with_the_job_as_last_seen(api: Api, key: str, producer: ProducerClient) -> None:
    job = await producer.submit({}, delay_ms=60_000)
    with pytest.raises(WaitTimeout) as exc:
        await producer.wait(job.id, timeout_s=0.3)
    assert (exc.value.job.id, exc.value.job.state, exc.value.timeout_s) == (job.id, JobState.SCHEDULED, 0.3)
    assert "still scheduled" in str(exc.value)
    ready = await producer.submit({"n": 1})
    async with WorkerClient(api.url, worker_id="w", api_key=key) as worker:
        (leased,) = await worker.lease(wait_ms=5000)
        await worker.complete(leased.id, leased.lease_token, {"ok": True})
    assert (await producer.wait(ready.id, timeout_s=5)).result == {"ok": True}


# --- WorkerClient(tenant_id=...) ------------------------------------------------------------


async def test_a_shared_key_with_a_tenant_id_is_refused(admin: AdminClient, api: Api) -> None:
    shared = await admin.create_worker_key()
    with pytest.raises(ValueError, match="cannot restrict a shared worker key"):
        WorkerClient(api.url, worker_id="w", tenant_id="tenant-a", api_key=shared)


async def test_a_tenant_id_that_is_not_the_keys_tenant_leases_nothing(
    api: Api, key: str, producer: ProducerClient
) -> None:
    job = await producer.submit({"n": 1}, max_attempts=1)
    async with WorkerClient(api.url, worker_id="wrong", tenant_id="tenant-b", api_key=key) as wrong:
        with pytest.raises(ValueError, match="for tenant 'tenant-b'"):
            await wrong.lease(wait_ms=5000)
    # Handed back at once and uncounted: the right worker runs its one attempt.
    async with WorkerClient(api.url, worker_id="right", tenant_id="tenant-a", api_key=key) as right:
        (leased,) = await right.lease(wait_ms=5000)
        assert (leased.id, leased.attempts) == (job.id, 1)


# --- the operator --------------------------------------------------------------------------


async def test_tenants_and_keys(admin: AdminClient, api: Api) -> None:
    created = await admin.create_tenant("acme", name="Acme", weight=3, max_inflight=5)
    assert (created.tenant.id, created.tenant.name, created.tenant.weight, created.tenant.max_inflight) == (
        "acme",
        "Acme",
        3,
        5,
    )
    with pytest.raises(Conflict):
        await admin.create_tenant("acme")
    assert [t.id for t in await admin.tenants()] == ["acme"]
    assert (await admin.tenant("acme")).weight == 3
    with pytest.raises(NotFound):
        await admin.tenant("nobody")
    assert (await admin.update_tenant("acme", weight=2)).max_inflight == 5  # left as it was
    assert (await admin.update_tenant("acme", max_inflight=None)).max_inflight is None
    async with ProducerClient(api.url, api_key=created.api_key) as p:
        await p.submit({})
        assert (await admin.update_tenant("acme", disabled=True)).disabled is True
        with pytest.raises(Forbidden):
            await p.submit({})
        await admin.update_tenant("acme", disabled=False)
        await p.submit({})

    second = await admin.create_key("acme")
    async with ProducerClient(api.url, api_key=second) as p2:
        assert len((await p2.list()).jobs) == 2
        await admin.revoke_key(second)
        with pytest.raises(Unauthorized):
            await p2.list()
    await admin.revoke_key(second.partition(".")[0])  # by its id; revoked already: nothing to do
    with pytest.raises(NotFound):
        await admin.revoke_key("tk_nosuchkey")
    with pytest.raises(NotFound):
        await admin.create_key("nobody")

    async with AdminClient(api.url, admin_token="not-the-token") as wrong:
        with pytest.raises(Unauthorized):
            await wrong.tenants()


async def test_worker_keys_reap_and_replay(admin: AdminClient, api: Api) -> None:
    key = (await admin.create_tenant("acme")).api_key
    async with (
        ProducerClient(api.url, api_key=key) as p,
        WorkerClient(api.url, worker_id="shared", api_key=await admin.create_worker_key()) as worker,
    ):
        job = await p.submit({}, max_attempts=3)
        (leased,) = await worker.lease(wait_ms=5000, lease_seconds=1)
        assert leased.tenant_id == "acme"
        assert await eventually(admin.reap, timeout=10) == 1
        assert (await p.get(job.id)).state in (JobState.READY, JobState.SCHEDULED)
        assert await admin.reap() == 0

        dead = [await p.submit({"n": n}, max_attempts=1, queue="q" + str(n % 2)) for n in range(3)]
        for _ in range(4):  # the three, and the reaped job once its backoff has passed
            (j,) = await worker.lease(wait_ms=5000, queues=["default", "q0", "q1"])
            await worker.fail(j.id, j.lease_token, "boom", retryable=False)
        assert await admin.replay("acme", ids=[dead[0].id]) == 1
        assert (await p.get(dead[0].id)).state is JobState.READY
        assert await admin.replay("acme", queue="q1") == 1
        assert await admin.replay("acme") == 2  # the rest: dead[2] and the reaped job
        assert await admin.replay("acme") == 0


async def test_admin_queue_pause(admin: AdminClient, producer: ProducerClient) -> None:
    state = await admin.pause_queue("tenant-a", "mail")
    assert state == QueueState(tenant_id="tenant-a", queue="mail", paused=True)
    assert await producer.queues.paused() == ["mail"]
    assert (await admin.resume_queue("tenant-a", "mail")).paused is False
    assert await producer.queues.paused() == []
    with pytest.raises(NotFound):
        await admin.pause_queue("nobody", "mail")


async def test_the_typed_example_manages_and_operates(api: Api, key: str) -> None:
    assert await typed_usage.manage(api.url, key) == ["images"]
    tenant = await typed_usage.operate(api.url, api.admin_token, "typed-ops")
    assert (tenant.id, tenant.weight, tenant.max_inflight) == ("typed-ops", 2, 10)
