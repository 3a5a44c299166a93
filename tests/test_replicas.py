"""Two `orchestrator serve` processes on different ports on one database, as replicas behind a
load balancer would be: every lease, fair-share decision, cron fire, retention deletion and
webhook delivery happens exactly once across them, and a replica that dies mid-delivery leaves
its webhook endpoint to the other."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from aiohttp import web

from .conftest import ADMIN_TOKEN
from .support import (
    Api,
    GatewayProcess,
    eventually,
    fetch,
    fetchval,
    free_port,
    metric_samples,
    metric_total,
    serve_routes,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@contextlib.asynccontextmanager
async def serving(database_url: str, **env: str) -> AsyncIterator[tuple[GatewayProcess, Api]]:
    """`orchestrator serve` on `database_url` (or env's DATABASE_URL), `env` added to its environment."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    child.update({"ORCH_LOG_FORMAT": "text", "ORCH_ACCESS_LOG": "off", **env})
    gw = GatewayProcess(child.pop("DATABASE_URL", database_url), ADMIN_TOKEN, env=child)
    api = Api(gw.url, ADMIN_TOKEN)
    try:
        await gw.wait_ready()
        yield gw, api
    finally:
        await api.close()
        output = gw.stop()
        # A statement that failed where it should not (a lost prepared statement, a broken
        # lock) shows as a 500 or a crashed background service in the log.
        for sign in ("prepared statement", "unhandled error", "crashed; restarting"):
            assert sign not in output, output[-3000:]


async def submit_many(api: Api, key: str, n: int, **fields: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 1000):
        batch = [{"payload": {"n": i}, **fields} for i in range(start, min(n, start + 1000))]
        r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": batch})
        assert r.status == 201, r.body
        ids += [j["id"] for j in r.body["jobs"]]
    return ids


async def lease(api: Api, key: str, worker: str, *, max_jobs: int = 1, wait_ms: int = 0) -> list[dict[str, Any]]:
    r = await api.signed(
        key, "POST", "/v1/workers/lease", {"worker_id": worker, "max_jobs": max_jobs, "wait_ms": wait_ms}
    )
    assert r.status == 200, r.body
    jobs: list[dict[str, Any]] = r.body["jobs"]
    return jobs


async def complete(api: Api, key: str, jobs: list[dict[str, Any]]) -> None:
    acks = [{"id": j["id"], "lease_token": j["lease_token"]} for j in jobs]
    r = await api.signed(key, "POST", "/v1/workers/ack", {"complete": acks})
    assert r.status == 200, r.body
    assert all(x["status"] == 200 for x in r.body["results"]), r.body


async def metric(api: Api, name: str, **labels: str) -> float:
    r = await api.admin("GET", "/metrics")
    assert r.status == 200, r.body
    return metric_total(metric_samples(r.raw.decode()), name, **labels)


@contextlib.asynccontextmanager
async def two_gateways(database_url: str, **env: str) -> AsyncIterator[list[Api]]:
    async with serving(database_url, **env) as (_a, first), serving(database_url, **env) as (_b, second):
        yield [first, second]


async def test_no_job_is_leased_twice_across_replicas(database_url: str) -> None:
    n = 3000
    async with two_gateways(database_url) as apis:
        tenant = await apis[0].tenant("acme")
        worker = await apis[1].worker_key()
        await submit_many(apis[0], tenant, n)
        leased: list[str] = []
        by_gateway: Counter[int] = Counter()

        async def loop(i: int) -> None:
            api = apis[i % 2]
            while len(leased) < n:
                jobs = await lease(api, worker, f"w{i}", max_jobs=25, wait_ms=200)
                leased.extend(j["id"] for j in jobs)
                by_gateway[i % 2] += len(jobs)
                if jobs:
                    await complete(api, worker, jobs)

        await asyncio.gather(*(loop(i) for i in range(8)))
    print(f"leases by gateway: {dict(by_gateway)}")
    assert len(leased) == n
    assert len(set(leased)) == n, [j for j, c in Counter(leased).items() if c > 1][:10]
    assert min(by_gateway.values()) > n // 10, by_gateway
    # One attempt each: a job leased twice would have been counted twice.
    assert await fetchval(database_url, "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND attempts = 1") == n


async def test_fair_share_holds_across_replicas(database_url: str) -> None:
    async with two_gateways(database_url) as apis:
        light = await apis[0].tenant("light", weight=1)
        heavy = await apis[1].tenant("heavy", weight=3)
        worker = await apis[0].worker_key()
        await submit_many(apis[0], light, 700)
        await submit_many(apis[1], heavy, 700)
        taken = 0

        async def loop(i: int) -> None:
            nonlocal taken
            api = apis[i % 2]
            while taken < 600:
                jobs = await lease(api, worker, f"shared-{i}", wait_ms=200)
                taken += len(jobs)
                if jobs:
                    await complete(api, worker, jobs)

        await asyncio.gather(*(loop(i) for i in range(6)))
    rows = await fetch(database_url, "SELECT tenant_id FROM events WHERE type = 'job.started' ORDER BY id LIMIT 600")
    counts = Counter(r["tenant_id"] for r in rows)
    share = counts["heavy"] / sum(counts.values())
    print(f"shared worker over two gateways: heavy (weight 3) {share:.3f} of {sum(counts.values())} (target 0.750)")
    assert abs(share - 0.75) <= 0.05, counts


async def test_cron_fires_once_per_due_time_across_replicas(database_url: str) -> None:
    async with two_gateways(database_url) as apis:
        tenant = await apis[0].tenant("acme")
        r = await apis[0].signed(
            tenant, "POST", "/v1/schedules", {"name": "tick", "cron": "* * * * * *", "queue": "cron"}
        )
        assert r.status == 201, r.body

        async def fired() -> bool:
            return bool(await fetchval(database_url, "SELECT count(*) >= 5 FROM schedule_fires"))

        await eventually(fired, timeout=30, every=0.2)
        # Pausing waits for a fire in progress (it holds the schedule's row), and none follow.
        r = await apis[1].signed(tenant, "PATCH", "/v1/schedules/tick", {"paused": True})
        assert r.status == 200, r.body
        jobs = await fetchval(database_url, "SELECT count(*) FROM jobs WHERE queue = 'cron'")

        async def counted() -> list[float] | None:
            per = [await metric(api, "orch_schedule_fires_total") for api in apis]
            return per if sum(per) == jobs else None

        per_gateway = await eventually(counted, timeout=10)
    times = [r["fire_at"] for r in await fetch(database_url, "SELECT fire_at FROM schedule_fires ORDER BY fire_at")]
    print(f"{len(times)} due times fired, by gateway: {per_gateway}")
    assert len(times) == jobs >= 5
    # Every second once, none skipped, none twice.
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times)), times


async def test_retention_prunes_once_across_replicas(database_url: str) -> None:
    n = 300
    env = {"ORCH_RETAIN_SUCCEEDED_SECONDS": "1", "ORCH_JOB_PRUNE_INTERVAL_SECONDS": "0.2"}
    async with two_gateways(database_url, **env) as apis:
        tenant = await apis[0].tenant("acme")
        await submit_many(apis[0], tenant, n)
        jobs: list[dict[str, Any]] = []
        while len(jobs) < n:
            jobs += await lease(apis[1], tenant, "w", max_jobs=100)
        await complete(apis[1], tenant, jobs)  # one transaction: all due at the same moment
        finished = time.monotonic()

        async def gone() -> bool:
            return bool(await fetchval(database_url, "SELECT count(*) = 0 FROM jobs"))

        await eventually(gone, timeout=30, every=0.1)
        pruned_after = time.monotonic() - finished

        async def counted() -> list[float] | None:
            per = [await metric(api, "orch_jobs_pruned_total", state="succeeded") for api in apis]
            return per if sum(per) >= n else None

        per_gateway = await eventually(counted, timeout=10)
    print(f"{n} jobs pruned {pruned_after:.2f} s after they finished, by gateway: {per_gateway}")
    # Deleted once, in one pass of one gateway, the other locked out.
    assert sorted(per_gateway) == [0, n], per_gateway


# --- webhooks ----------------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """Webhook endpoints on one loopback port: the event ids each endpoint received (by its
    X-Orch-Webhook-Id), in order. Attempt n gets a 503 when `fails(n)`; attempts in `hold` hang
    until `release` is set (and are not counted as received)."""

    fails: Callable[[int], bool] = lambda _n: False
    hold: set[int] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    received: dict[str, list[str]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def count(self) -> int:
        return sum(len(ids) for ids in self.received.values())

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        n = self.attempts
        if n in self.hold:
            await self.release.wait()
            return web.Response(status=504)
        if self.fails(n):
            return web.Response(status=503)
        event_id = msgspec.json.decode(body)["id"]
        self.received.setdefault(request.headers["X-Orch-Webhook-Id"], []).append(event_id)
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[WebhookReceiver]:
        async with serve_routes(self.port, {"/hook": self._hook}):
            try:
                yield self
            finally:
                self.release.set()


# The receivers listen on loopback, which webhooks reach only when allowed.
WEBHOOK_ENV = {"ORCH_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}


async def register_webhook(api: Api, key: str, url: str, **fields: Any) -> str:
    r = await api.signed(key, "POST", "/v1/webhooks", {"url": url, **fields})
    assert r.status == 201, r.body
    hook_id: str = r.body["id"]
    return hook_id


async def stored_events(database_url: str, tenant_id: str, types: list[str] | None = None) -> list[str]:
    """The tenant's event ids in the order readers get them."""
    rows = await fetch(
        database_url,
        "SELECT e.xid::text || '-' || e.id AS event_id FROM events e"
        " WHERE e.tenant_id = $1 AND ($2::text[] IS NULL OR e.type = ANY ($2)) ORDER BY e.xid, e.id",
        tenant_id,
        types,
    )
    return [r["event_id"] for r in rows]


async def all_released(database_url: str) -> bool:
    return bool(await fetchval(database_url, "SELECT count(*) = 0 FROM webhooks WHERE lease_owner IS NOT NULL"))


async def deliver_across(apis: list[Api], database_url: str, receiver: WebhookReceiver, rounds: int = 6) -> list[float]:
    """Six endpoints of two tenants (one of them taking only job.succeeded), events made through
    both replicas in `rounds` rounds; waits until every endpoint received every event of its
    tenant it asked for, checks that each arrived once and in order, and returns the deliveries
    counted per replica."""
    hooks: dict[str, tuple[str, list[str] | None]] = {}
    keys = {}
    for i, tenant in enumerate(("acme", "globex")):
        keys[tenant] = await apis[i].tenant(tenant)
        for j in range(3):
            types = ["job.succeeded"] if j == 2 else None
            fields = {"event_types": types} if types else {}
            hooks[await register_webhook(apis[j % 2], keys[tenant], receiver.url, **fields)] = (tenant, types)
    for n in range(rounds):
        for key in keys.values():
            await submit_many(apis[n % 2], key, 30)
            jobs = await lease(apis[(n + 1) % 2], key, f"w{n}", max_jobs=10)
            await complete(apis[n % 2], key, jobs)
    expected = {h: await stored_events(database_url, t, types) for h, (t, types) in hooks.items()}
    total = sum(len(ids) for ids in expected.values())
    # a round makes 30 created, 10 started and 10 succeeded events per tenant
    assert total == rounds * 2 * (2 * 50 + 10)

    async def delivered() -> bool:
        return receiver.count() >= total

    await eventually(delivered, timeout=60, every=0.1)
    for hook_id, ids in expected.items():
        assert receiver.received[hook_id] == ids, hook_id  # each once, in order
    per_replica = [await metric(api, "orch_webhook_deliveries_total", outcome="delivered") for api in apis]
    assert sum(per_replica) == total, per_replica
    await eventually(lambda: all_released(database_url), timeout=10)
    return per_replica


async def test_webhooks_are_delivered_once_in_order_across_replicas(database_url: str) -> None:
    # Each replica delivers at most two endpoints at once, so both take some of the six; every
    # 25th attempt fails, so endpoints also move between replicas after the retry.
    env = {
        **WEBHOOK_ENV,
        "ORCH_WEBHOOK_CONCURRENCY": "2",
        "ORCH_WEBHOOK_RETRY_BASE_MS": "200",
        "ORCH_WEBHOOK_RETRY_CAP_MS": "200",
        "ORCH_WEBHOOK_MAX_ATTEMPTS": "50",
        "ORCH_WEBHOOK_POLL_SECONDS": "0.5",
    }
    receiver = WebhookReceiver(fails=lambda n: n % 25 == 0)
    async with receiver.serving(), two_gateways(database_url, **env) as apis:
        per_replica = await deliver_across(apis, database_url, receiver)
        claimed = [await metric(api, "orch_webhook_leases_total", outcome="claimed") for api in apis]
        taken_over = [await metric(api, "orch_webhook_leases_total", outcome="taken_over") for api in apis]
    print(f"{sum(per_replica):.0f} webhook deliveries by replica: {per_replica}, leases claimed: {claimed}")
    assert all(per_replica), per_replica
    assert all(claimed), claimed
    assert taken_over == [0, 0]  # every lease was given up, none ran out


async def test_a_replica_killed_mid_delivery_leaves_its_endpoint_to_the_other(database_url: str) -> None:
    # A 1 s delivery time limit makes leases of 7 s (2 x 1 s + 5 s). The replica holding the
    # endpoint is killed while its first POST hangs; the other takes the endpoint over once the
    # lease has run out (it wakes for that, well before its 5 s poll) and delivers every event.
    lease_seconds = 7.0
    env = {**WEBHOOK_ENV, "ORCH_WEBHOOK_TIMEOUT_SECONDS": "1"}
    receiver = WebhookReceiver(hold={1})
    async with (
        receiver.serving(),
        serving(database_url, **env) as (gw_a, a),
        serving(database_url, **env) as (gw_b, b),
    ):
        key = await a.tenant("acme")
        hook_id = await register_webhook(b, key, receiver.url)
        await submit_many(a, key, 5)

        async def posting() -> bool:
            return receiver.attempts == 1

        await eventually(posting, timeout=10)
        claimed = [await metric(api, "orch_webhook_leases_total", outcome="claimed") for api in (a, b)]
        assert sorted(claimed) == [0, 1], claimed
        replicas = [(gw_a, a), (gw_b, b)]
        holder = claimed.index(1)
        survivor_gw, survivor = replicas[1 - holder]
        replicas[holder][0].kill()
        killed_at = time.monotonic()

        async def delivered() -> bool:
            return len(receiver.received.get(hook_id, [])) >= 5

        await eventually(delivered, timeout=lease_seconds + 10, every=0.1)
        took = time.monotonic() - killed_at
        assert receiver.received[hook_id] == await stored_events(database_url, "acme")
        assert await metric(survivor, "orch_webhook_leases_total", outcome="taken_over") == 1
        assert f"webhook {hook_id}: lease taken over from" in survivor_gw.output()
        r = await survivor.signed(key, "GET", f"/v1/webhooks/{hook_id}")
        assert (r.body["delivered"], r.body["attempts"]) == (5, 0), r.body
    print(f"endpoint taken over and caught up {took:.1f} s after its holder was killed (lease {lease_seconds:.0f} s)")
    assert took < lease_seconds + 3, took
