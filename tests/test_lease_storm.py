"""No job is ever leased to two workers at once, across many workers and two gateway processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, fetch, submit_until_every_process_served, worker_pids

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

JOBS = 2000
LOOPS = 20


async def test_lease_storm_across_two_gateway_processes(database_url: str) -> None:
    gateways = [GatewayProcess(database_url, ADMIN_TOKEN), GatewayProcess(database_url, ADMIN_TOKEN)]
    clients: list[Api] = []
    try:
        await asyncio.gather(*(g.wait_ready() for g in gateways))
        clients = [Api(g.url, ADMIN_TOKEN) for g in gateways]
        key = await clients[0].tenant("tenant-a")
        worker_key = await clients[1].worker_key()
        for start in range(0, JOBS, 500):
            batch = [{"payload": {"n": n}} for n in range(start, start + 500)]
            r = await clients[start // 500 % 2].signed(key, "POST", "/v1/jobs/batch", {"jobs": batch})
            assert r.status == 201, r.body

        # (job id, token, leased at, completed at) for every lease any loop got
        leases: list[tuple[str, int, float, float]] = []
        completed = 0

        async def loop(i: int) -> None:
            nonlocal completed
            client = clients[i % 2]
            use_key = key if i % 3 else worker_key  # pinned and shared workers together
            while completed < JOBS:
                r = await client.signed(
                    use_key, "POST", "/v1/workers/lease", {"worker_id": f"w{i}", "max_jobs": 1 + i % 5, "wait_ms": 200}
                )
                assert r.status == 200, r.body
                if not r.body["jobs"]:
                    continue
                got = time.monotonic()
                acks = [{"id": j["id"], "lease_token": j["lease_token"], "result": {"by": i}} for j in r.body["jobs"]]
                a = await client.signed(use_key, "POST", "/v1/workers/ack", {"complete": acks})
                assert a.status == 200, a.body
                done = time.monotonic()
                for j, res in zip(r.body["jobs"], a.body["results"], strict=True):
                    assert res == {"id": j["id"], "status": 200, "state": "succeeded"}
                    leases.append((j["id"], j["lease_token"], got, done))
                completed += len(r.body["jobs"])

        await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(LOOPS))), 180)

        per_job: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for job_id, token, got, done in leases:
            per_job[job_id].append((token, got, done))
        twice = {j: v for j, v in per_job.items() if len(v) > 1}
        assert not twice, f"leased more than once: {list(twice.items())[:3]}"
        assert len(per_job) == JOBS
        assert len({t for _, t, _, _ in leases}) == len(leases), "lease tokens must be unique"

        rows = await fetch(database_url, "SELECT state::text AS state, attempts, count(*) AS n FROM jobs GROUP BY 1, 2")
        assert [(r["state"], r["attempts"], r["n"]) for r in rows] == [("succeeded", 1, JOBS)]
        events = Counter(
            (r["type"], r["n"])
            for r in await fetch(database_url, "SELECT type, count(*) AS n FROM events GROUP BY job_id, type")
        )
        assert events == {("job.created", 1): JOBS, ("job.started", 1): JOBS, ("job.succeeded", 1): JOBS}
    finally:
        for c in clients:
            await c.close()
        for g in gateways:
            g.stop()


async def test_serve_with_several_processes_shares_one_port(database_url: str, tmp_path: Path) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, env={**os.environ, "ORCH_METRICS_DIR": str(tmp_path)})
    try:
        await gw.wait_ready()
        pids = worker_pids(gw)
        assert len(pids) == 2, pids
        client = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await client.tenant("tenant-a")
            # each process counts what it served in its own metrics snapshot, named by its pid
            submitted, per_process = await submit_until_every_process_served(gw, key, tmp_path)
            assert set(per_process) == pids, (per_process, pids)
            ids = {j["id"] for j in (await client.signed(key, "GET", "/v1/jobs?limit=1000")).body["jobs"]}
            assert len(ids) == submitted
        finally:
            await client.close()
    finally:
        gw.stop()
