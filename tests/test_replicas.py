"""Two `orchestrator serve` processes on different ports on one database, as replicas behind a
load balancer would be: every lease, fair-share decision, cron fire and retention deletion
happens exactly once across them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, eventually, fetch, fetchval, metric_samples, metric_total

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
