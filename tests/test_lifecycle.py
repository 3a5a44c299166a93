"""The life of a job: cancellation, retries into the dead-letter queue, replay, idempotency,
delayed starts, and recovery from a worker killed mid-job."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import msgspec
import pytest

from core import Settings, backoff_ceiling_ms

from .support import Api, InProcessGateway, eventually, fetch, fetchval, running

pytestmark = pytest.mark.timeout(120)


async def _lease(api: Api, key: str, wait_ms: int = 0, **fields: Any) -> list[dict[str, Any]]:
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": wait_ms, **fields})
    assert r.status == 200, r.body
    jobs: list[dict[str, Any]] = r.body["jobs"]
    return jobs


async def _event_types(database_url: str, job_id: str) -> list[str]:
    rows = await fetch(database_url, "SELECT type FROM events WHERE job_id = $1 ORDER BY id", int(job_id))
    return [r["type"] for r in rows]


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_scheduled_and_ready_jobs_at_once(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    scheduled = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "delay_ms": 60_000})).body
    ready = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    for job in (scheduled, ready):
        r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")
        assert r.status == 200 and r.body["state"] == "cancelled" and r.body["finished_at"]
        assert await _event_types(database_url, job["id"]) == ["job.created", "job.cancelled"]
        # terminal now: a second cancel is a conflict
        again = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")
        assert again.status == 409
    assert await _lease(api, key) == []


async def test_cancel_a_running_job_then_its_worker_fails_it(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 5})).body
    (leased,) = await _lease(api, key)
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")
    assert r.status == 200 and r.body["state"] == "running" and r.body["cancel_requested"] is True
    beat = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/heartbeat", {"lease_token": leased["lease_token"]})
    assert beat.body["cancel_requested"] is True
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": leased["lease_token"], "error": "stopped"}
    )
    assert r.body["state"] == "cancelled"  # never retried, attempts remaining or not
    assert await _event_types(database_url, job["id"]) == ["job.created", "job.started", "job.cancelled"]
    assert (await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")).status == 409


async def test_cancelled_running_job_whose_lease_expires_is_cancelled(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 5})).body
    await _lease(api, key, lease_seconds=1)
    await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")

    async def cancelled() -> bool:
        return bool((await api.signed(key, "GET", f"/v1/jobs/{job['id']}")).body["state"] == "cancelled")

    await eventually(cancelled, timeout=10)
    assert await _event_types(database_url, job["id"]) == ["job.created", "job.started", "job.cancelled"]


async def test_a_worker_that_completes_a_cancelled_job_anyway_succeeds(api: Api) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    (leased,) = await _lease(api, key)
    await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": leased["lease_token"]})
    assert r.body["state"] == "succeeded"
    assert (await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")).status == 409


# --- retries, dead letters, replay ---------------------------------------------------------


@pytest.fixture
def fast_retry_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, retry_base_ms=200, retry_cap_ms=5_000)


async def test_always_failing_jobs_back_off_exponentially_into_dead_then_replay(
    fast_retry_settings: Settings, database_url: str
) -> None:
    attempts, jobs_n = 4, 24
    async with running(InProcessGateway(fast_retry_settings)) as gw:
        api = Api(gw.url, fast_retry_settings.admin_token or "")
        try:
            key = await api.tenant("tenant-a")
            batch = {"jobs": [{"payload": {"n": n}, "max_attempts": attempts} for n in range(jobs_n)]}
            await api.signed(key, "POST", "/v1/jobs/batch", batch)

            async def worker() -> None:
                while True:
                    leased = await _lease(api, key, wait_ms=1000, max_jobs=10)
                    if not leased:
                        dead = (await api.signed(key, "GET", "/v1/jobs?state=dead&limit=1000")).body["jobs"]
                        if len(dead) == jobs_n:
                            return
                        continue
                    fails = [
                        {"id": j["id"], "lease_token": j["lease_token"], "error": f"boom {j['attempts']}"}
                        for j in leased
                    ]
                    r = await api.signed(key, "POST", "/v1/workers/ack", {"fail": fails})
                    assert all(x["status"] == 200 for x in r.body["results"])

            await asyncio.wait_for(asyncio.gather(worker(), worker()), 60)

            dead = (await api.signed(key, "GET", "/v1/jobs?state=dead&limit=1000")).body["jobs"]
            assert len(dead) == jobs_n
            assert all(j["attempts"] == attempts and j["last_error"] == f"boom {attempts}" for j in dead)

            # The delay before attempt k+1 is the retry's run_at less the moment it was scheduled:
            # full jitter over [0, ceiling(k)]. The next attempt starts at run_at or later, never before.
            rows = await fetch(database_url, "SELECT job_id, type, at, data FROM events ORDER BY id")
            by_job: dict[int, list[Any]] = defaultdict(list)
            for r in rows:
                by_job[r["job_id"]].append(r)
            delays: dict[int, list[float]] = defaultdict(list)
            lateness: list[float] = []
            for events in by_job.values():
                types = [e["type"] for e in events]
                assert types == ["job.created"] + ["job.started", "job.retry_scheduled"] * (attempts - 1) + [
                    "job.started",
                    "job.dead",
                ]
                for i, e in enumerate(events):
                    if e["type"] == "job.retry_scheduled":
                        run_at = datetime.fromisoformat(e["data"]["run_at"])
                        delays[e["data"]["attempt"]].append((run_at - e["at"]).total_seconds() * 1000)
                        lateness.append((events[i + 1]["at"] - run_at).total_seconds() * 1000)
            means = {}
            for attempt, ds in sorted(delays.items()):
                ceiling = backoff_ceiling_ms(attempt, 200, 5_000)
                assert min(ds) >= 0 and max(ds) <= ceiling, (attempt, ceiling, min(ds), max(ds))
                means[attempt] = statistics.mean(ds)
                print(
                    f"attempt {attempt}: ceiling {ceiling} ms, mean delay {means[attempt]:.0f} ms, max {max(ds):.0f} ms"
                )
            assert means[1] < means[2] < means[3], means
            print(f"started after run_at by {min(lateness):.1f} to {max(lateness):.1f} ms")
            assert min(lateness) >= 0, "a retry started before its run_at"

            # replay one, then the rest of the dead-letter queue at once
            one = dead[0]["id"]
            r = await api.signed(key, "POST", f"/v1/jobs/{one}/retry")
            assert (r.status, r.body["state"], r.body["attempts"]) == (200, "ready", 0)
            assert (await api.signed(key, "POST", f"/v1/jobs/{one}/retry")).status == 409
            (leased,) = await _lease(api, key)
            assert leased["id"] == one
            done = await api.signed(key, "POST", f"/v1/jobs/{one}/complete", {"lease_token": leased["lease_token"]})
            assert done.body["state"] == "succeeded"
            assert (await _event_types(database_url, one))[-3:] == ["job.replayed", "job.started", "job.succeeded"]
            r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a"})
            assert r.body == {"replayed": jobs_n - 1}
            assert (await api.signed(key, "GET", "/v1/jobs?state=dead")).body["jobs"] == []
        finally:
            await api.close()


async def test_retry_policy_per_tenant_queue_and_job(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "PUT", "/v1/retry-policy", {"max_attempts": 7, "retry_base_ms": 10})
    assert r.status == 200 and r.body == {"queue": None, "max_attempts": 7, "retry_base_ms": 10, "retry_cap_ms": None}
    r = await api.signed(key, "PUT", "/v1/queues/slow/retry-policy", {"max_attempts": 2, "retry_base_ms": 600_000})
    assert r.status == 200
    assert (await api.signed(key, "GET", "/v1/queues/slow/retry-policy")).body["max_attempts"] == 2

    default_q = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    slow_q = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": "slow"})).body
    own = (
        await api.signed(
            key, "POST", "/v1/jobs", {"payload": {}, "queue": "slow", "max_attempts": 3, "retry_base_ms": 1}
        )
    ).body
    assert (default_q["max_attempts"], slow_q["max_attempts"], own["max_attempts"]) == (7, 2, 3)

    # the queue's own settings win over the tenant-wide ones, field by field
    policy = await fetch(database_url, "SELECT * FROM orch_retry_policy('tenant-a', 'slow')")
    assert tuple(policy[0]) == (2, 600_000, None)
    policy = await fetch(database_url, "SELECT * FROM orch_retry_policy('tenant-a', 'default')")
    assert tuple(policy[0]) == (7, 10, None)
    # a job's own backoff base (1 ms) wins over its queue's (10 minutes)
    for _ in range(2):
        (leased,) = await _lease(api, key, queues=["slow"])
        r = await api.signed(
            key, "POST", f"/v1/jobs/{leased['id']}/fail", {"lease_token": leased["lease_token"], "error": "x"}
        )
        assert r.body["state"] == "scheduled"
        if leased["id"] == own["id"]:
            assert _ts(r.body["run_at"]) - time.time() < 1
    assert (await api.signed(key, "DELETE", "/v1/queues/slow/retry-policy")).status == 204
    assert (await api.signed(key, "DELETE", "/v1/queues/slow/retry-policy")).status == 404
    r = await api.signed(key, "PUT", "/v1/retry-policy", {"max_attempts": 0})
    assert (r.status, r.body["field"]) == (422, "max_attempts")


async def _dead_jobs(api: Api, key: str, queue: str, n: int) -> list[str]:
    """Submit `n` jobs that may run once, lease them and fail them all: `n` dead jobs, oldest first."""
    jobs = [{"payload": {"n": i}, "queue": queue, "max_attempts": 1} for i in range(n)]
    ids = [j["id"] for j in (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": jobs})).body["jobs"]]
    while leased := await _lease(api, key, queues=[queue], max_jobs=100):
        fails = [{"id": j["id"], "lease_token": j["lease_token"], "error": "boom"} for j in leased]
        r = await api.signed(key, "POST", "/v1/workers/ack", {"fail": fails})
        assert [x["state"] for x in r.body["results"]] == ["dead"] * len(leased), r.body
    return ids


async def _states(database_url: str, ids: list[str]) -> list[str]:
    rows = await fetch(
        database_url, "SELECT state::text AS s FROM jobs WHERE id = ANY($1) ORDER BY id", [int(i) for i in ids]
    )
    return [r["s"] for r in rows]


async def test_operator_replay_by_queue_by_ids_and_with_a_limit(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    other = await api.tenant("tenant-b")
    emails = await _dead_jobs(api, key, "emails", 3)
    reports = await _dead_jobs(api, key, "reports", 4)
    theirs = await _dead_jobs(api, other, "emails", 2)
    alive = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": "later", "delay_ms": 600_000})).body

    # a queue: only that queue's dead jobs, only this tenant's
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "queue": "emails"})
    assert (r.status, r.body) == (200, {"replayed": 3})
    assert await _states(database_url, emails) == ["ready"] * 3
    assert await _states(database_url, reports + theirs) == ["dead"] * 6
    for job_id in emails:
        assert (await _event_types(database_url, job_id))[-1] == "job.replayed"
        job = (await api.signed(key, "GET", f"/v1/jobs/{job_id}")).body
        assert (job["attempts"], job["finished_at"]) == (0, None)

    # ids: the named dead jobs of the tenant; another tenant's, a ready one and one not dead are left
    named = [reports[1], reports[3], theirs[0], emails[0], alive["id"]]
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "ids": named})
    assert (r.status, r.body) == (200, {"replayed": 2})
    assert await _states(database_url, reports) == ["dead", "ready", "dead", "ready"]
    assert await _states(database_url, [*theirs, alive["id"]]) == ["dead", "dead", "scheduled"]

    # a limit: the oldest dead jobs first, no more than asked
    more = await _dead_jobs(api, key, "digests", 3)
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "limit": 3})
    assert (r.status, r.body) == (200, {"replayed": 3})
    assert await _states(database_url, reports + more) == ["ready"] * 4 + ["ready", "dead", "dead"]
    assert await _states(database_url, theirs) == ["dead", "dead"]
    # nothing left to replay in a queue: zero, not an error
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "queue": "emails"})
    assert (r.status, r.body) == (200, {"replayed": 0})
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "limit": 0})
    assert (r.status, r.body["field"]) == (422, "limit")


async def test_operator_replay_pages_through_a_large_dead_letter_queue(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    ids = await _dead_jobs(api, key, "bulk", 520)
    # more than one page (500 per transaction), and a limit that ends inside the second
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "limit": 510})
    assert (r.status, r.body) == (200, {"replayed": 510})
    assert await _states(database_url, ids) == ["ready"] * 510 + ["dead"] * 10
    replayed = await fetchval(database_url, "SELECT count(*) FROM events WHERE type = 'job.replayed'")
    assert replayed == 510


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


# --- idempotency -------------------------------------------------------------------------


async def test_fifty_simultaneous_identical_submits_make_one_job(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    body = {"payload": {"order": 17}, "idempotency_key": "order-17"}
    replies = await asyncio.gather(*(api.signed(key, "POST", "/v1/jobs", body) for _ in range(50)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 49 + [201]
    assert len({r.body["id"] for r in replies}) == 1
    assert len(await fetch(database_url, "SELECT 1 FROM jobs")) == 1
    assert len(await fetch(database_url, "SELECT 1 FROM events")) == 1
    # another tenant may use the same key for its own job
    other = await api.tenant("tenant-b")
    assert (await api.signed(other, "POST", "/v1/jobs", body)).status == 201


# --- delayed jobs ------------------------------------------------------------------------


async def test_delayed_jobs_start_on_time(api: Api, gateway: InProcessGateway, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    delays = [200, 350, 500, 800, 1100, 1500, 2000]
    parked = [asyncio.create_task(_lease(api, key, wait_ms=10_000)) for _ in delays]

    async def all_parked() -> bool:
        return len(gateway.runtime.notifier.lease_waiters) == len(delays)

    await eventually(all_parked, timeout=5)
    for d in delays:
        await api.signed(key, "POST", "/v1/jobs", {"payload": {"delay": d}, "delay_ms": d})
    got = await asyncio.wait_for(asyncio.gather(*parked), 15)
    assert sorted(j[0]["payload"]["delay"] for j in got) == delays
    rows = await fetch(
        database_url, "SELECT payload, extract(epoch FROM started_at - run_at) * 1000 AS late_ms FROM jobs ORDER BY id"
    )
    lateness = [float(r["late_ms"]) for r in rows]
    print("lateness ms:", ", ".join(f"{x:.1f}" for x in lateness))
    assert min(lateness) >= 0, "started before its time"
    # a parked worker is woken by the promotion timer, not by a poll: late by a round trip at most
    assert max(lateness) <= 250, lateness


# --- a worker killed mid-job ---------------------------------------------------------------

WORKER = """
import asyncio, sys
from tests.support import Api

async def main() -> None:
    api = Api(sys.argv[1], "")
    r = await api.signed(sys.argv[2], "POST", "/v1/workers/lease", {"worker_id": "doomed", "wait_ms": 5000, "lease_seconds": 1})
    job = r.body["jobs"][0]
    print(job["id"], job["lease_token"], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_killed_worker_job_is_re_run_and_the_stale_worker_is_fenced_out(
    fast_retry_settings: Settings, database_url: str
) -> None:
    async with running(InProcessGateway(fast_retry_settings)) as gw:
        api = Api(gw.url, fast_retry_settings.admin_token or "")
        try:
            key = await api.tenant("tenant-a")
            job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 3})).body
            proc = subprocess.Popen([sys.executable, "-c", WORKER, gw.url, key], stdout=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
                job_id, stale_token = line.split()
                assert job_id == job["id"]
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()
            assert proc.returncode == -signal.SIGKILL
            # another worker gets it once the lease has expired and the reaper has handed it back
            leased = await _lease(api, key, wait_ms=10_000)
            assert [j["id"] for j in leased] == [job_id]
            assert leased[0]["attempts"] == 2 and leased[0]["lease_token"] != int(stale_token)
            late = await api.signed(key, "POST", f"/v1/jobs/{job_id}/complete", {"lease_token": int(stale_token)})
            assert late.status == 409
            ok = await api.signed(key, "POST", f"/v1/jobs/{job_id}/complete", {"lease_token": leased[0]["lease_token"]})
            assert ok.body["state"] == "succeeded"
            rows = await fetch(database_url, "SELECT type, data FROM events WHERE job_id = $1 ORDER BY id", int(job_id))
            assert [r["type"] for r in rows] == [
                "job.created",
                "job.started",
                "job.retry_scheduled",
                "job.started",
                "job.succeeded",
            ]
            assert rows[1]["data"]["worker_id"] == "doomed" and rows[2]["data"]["reason"] == "lease_expired"
            assert [rows[1]["data"]["attempt"], rows[3]["data"]["attempt"]] == [1, 2]
        finally:
            await api.close()
