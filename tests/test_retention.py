"""Retention of finished jobs: policies per deployment, tenant and queue, the pruner against a
real server, the database statements it runs, and their plans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

import db
from core import JobState, Settings, load_settings
from gateway.services import job_pruner

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually, metric_samples, metric_total

pytestmark = pytest.mark.timeout(90)

FAST = 0.1  # seconds between pruning passes in these tests


def _settings(base: Settings, **retain: int | None) -> Settings:
    fields: dict[str, Any] = {"job_prune_interval_seconds": FAST}
    fields.update({f"retain_{state}_seconds": v for state, v in retain.items()})
    return msgspec.structs.replace(base, **fields)


async def _started(settings: Settings) -> AsyncIterator[tuple[InProcessGateway, Api]]:
    gw = InProcessGateway(settings)
    await gw.start()
    api = Api(gw.url, ADMIN_TOKEN)
    try:
        yield gw, api
    finally:
        await api.close()
        await gw.stop()


@pytest.fixture
async def short(settings: Settings) -> AsyncIterator[tuple[InProcessGateway, Api]]:
    """A gateway that keeps finished jobs of every state for one second."""
    async for pair in _started(_settings(settings, succeeded=1, cancelled=1, dead=1)):
        yield pair


@pytest.fixture
async def forever(settings: Settings) -> AsyncIterator[tuple[InProcessGateway, Api]]:
    """A gateway whose deployment keeps finished jobs for ever but dead ones a second."""
    async for pair in _started(_settings(settings, succeeded=None, cancelled=None, dead=1)):
        yield pair


async def _submit(api: Api, key: str, queue: str, **fields: Any) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/jobs", {"queue": queue, **fields})
    assert r.status in (200, 201), r.body
    job: dict[str, Any] = r.body
    return job


async def _lease(api: Api, key: str, queue: str) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "queues": [queue], "wait_ms": 5000})
    assert r.status == 200 and len(r.body["jobs"]) == 1, r.body
    job: dict[str, Any] = r.body["jobs"][0]
    return job


async def _finish(api: Api, key: str, queue: str, state: str, **fields: Any) -> str:
    """A new job of `queue` taken to `state` (succeeded, dead or cancelled); its id."""
    job = await _submit(api, key, queue, **fields)
    if state == "cancelled":
        r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/cancel")
    else:
        leased = await _lease(api, key, queue)
        assert leased["id"] == job["id"]
        token = leased["lease_token"]
        if state == "succeeded":
            r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": token})
        else:
            body = {"lease_token": token, "error": "no", "retryable": False}
            r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", body)
    assert r.status == 200 and r.body["state"] == state, r.body
    return str(job["id"])


async def _status(api: Api, key: str, job_id: str) -> int:
    return (await api.signed(key, "GET", f"/v1/jobs/{job_id}")).status


async def _gone(api: Api, key: str, *job_ids: str, timeout: float = 20.0) -> None:
    async def check() -> bool:
        return all([await _status(api, key, j) == 404 for j in job_ids])

    await eventually(check, timeout=timeout)


async def _pruned(api: Api) -> dict[str, float]:
    r = await api.session.get(api.url + "/metrics")
    samples = metric_samples(await r.text())
    return {s: metric_total(samples, "orch_jobs_pruned_total", state=s) for s in ("succeeded", "cancelled", "dead")}


# --- against a real server -------------------------------------------------------------------


async def test_finished_jobs_are_deleted_after_their_retention_and_live_ones_never(
    short: tuple[InProcessGateway, Api],
) -> None:
    _, api = short
    key = await api.tenant("acme")
    before = await _pruned(api)
    waiting = await _submit(api, key, "idle")  # ready, never leased
    later = await _submit(api, key, "idle", delay_ms=3_600_000)  # scheduled
    await _submit(api, key, "busy")
    running = await _lease(api, key, "busy")
    finished = {s: await _finish(api, key, "work", s) for s in ("succeeded", "cancelled", "dead")}

    await _gone(api, key, *finished.values())
    for job in (waiting, later, running):
        assert await _status(api, key, job["id"]) == 200, job
    # the counter counts exactly what went, by state
    after = await _pruned(api)
    assert {s: after[s] - before[s] for s in after} == {"succeeded": 1, "cancelled": 1, "dead": 1}
    # a later pass, which saw the live jobs after the finished ones were gone, left them too
    canary = await _finish(api, key, "work", "succeeded")
    await _gone(api, key, canary)
    rows = await api.signed(key, "GET", "/v1/jobs?limit=10")
    assert {j["id"] for j in rows.body["jobs"]} == {waiting["id"], later["id"], running["id"]}
    lag = metric_samples(await (await api.session.get(api.url + "/metrics")).text())
    assert ("orch_job_retention_lag_seconds", frozenset()) in lag


async def test_an_idempotency_key_holds_for_the_retention_of_its_job(forever: tuple[InProcessGateway, Api]) -> None:
    _, api = forever
    key = await api.tenant("acme")
    first = await _finish(api, key, "mail", "succeeded", idempotency_key="k-1")
    # a pass that had the succeeded job before it (kept for ever) has run once a dead one is gone
    await _gone(api, key, await _finish(api, key, "mail", "dead"))
    again = await api.signed(key, "POST", "/v1/jobs", {"queue": "mail", "idempotency_key": "k-1"})
    assert (again.status, again.body["id"]) == (200, first)

    r = await api.signed(key, "PUT", "/v1/queues/mail/retention", {"succeeded_seconds": 1})
    assert r.status == 200, r.body
    await _gone(api, key, first)
    fresh = await api.signed(key, "POST", "/v1/jobs", {"queue": "mail", "idempotency_key": "k-1"})
    assert fresh.status == 201 and fresh.body["id"] != first, fresh.body
    assert fresh.body["state"] == "ready"


async def test_queue_policies_win_over_the_tenants_and_the_tenants_over_the_deployments(
    forever: tuple[InProcessGateway, Api],
) -> None:
    _, api = forever
    acme = await api.tenant("acme")
    other = await api.tenant("other")
    # acme: succeeded jobs are kept not at all; dead ones for ever, but a second in "fast"
    r = await api.signed(acme, "PUT", "/v1/retention", {"succeeded_seconds": 0, "dead_seconds": None})
    assert r.status == 200, r.body
    assert r.body == {
        "queue": None,
        "succeeded_seconds": 0,
        "dead_seconds": None,
        "effective": {"succeeded_seconds": 0, "cancelled_seconds": None, "dead_seconds": None},
    }
    # "keep" keeps succeeded jobs for ever; "fast" sets only dead, so it inherits succeeded
    r = await api.signed(acme, "PUT", "/v1/queues/keep/retention", {"succeeded_seconds": None})
    assert r.body["effective"] == {"succeeded_seconds": None, "cancelled_seconds": None, "dead_seconds": None}
    r = await api.signed(acme, "PUT", "/v1/queues/fast/retention", {"dead_seconds": 1})
    assert r.body == {
        "queue": "fast",
        "dead_seconds": 1,
        "effective": {"succeeded_seconds": 0, "cancelled_seconds": None, "dead_seconds": 1},
    }

    doomed = [
        await _finish(api, acme, "plain", "succeeded"),  # tenant 0 over deployment forever
        await _finish(api, acme, "fast", "succeeded"),  # inherited from the tenant: 0
        await _finish(api, acme, "fast", "dead"),  # the queue's 1 s over the tenant's forever
    ]
    kept_acme = [
        await _finish(api, acme, "keep", "succeeded"),  # the queue's forever over the tenant's 0
        await _finish(api, acme, "plain", "dead"),  # the tenant's forever over the deployment's 1 s
        await _finish(api, acme, "plain", "cancelled"),  # nobody sets it: the deployment's forever
    ]
    kept_other = [await _finish(api, other, "plain", "succeeded")]  # another tenant: the deployment's
    await _gone(api, acme, *doomed)
    # and a later pass, with everything before it overdue if resolved wrongly, kept them
    await _gone(api, other, await _finish(api, other, "plain", "dead"))
    for job_id in kept_acme:
        assert await _status(api, acme, job_id) == 200
    for job_id in kept_other:
        assert await _status(api, other, job_id) == 200

    # dropping the queue's policy: "keep" inherits the tenant's 0 and its job goes
    assert (await api.signed(acme, "DELETE", "/v1/queues/keep/retention")).status == 204
    await _gone(api, acme, kept_acme[0])
    # dropping the tenant's: dead jobs of "plain" fall back to the deployment's second
    assert (await api.signed(acme, "DELETE", "/v1/retention")).status == 204
    await _gone(api, acme, kept_acme[1])
    assert await _status(api, acme, kept_acme[2]) == 200


async def test_retention_policies_read_write_and_refuse(forever: tuple[InProcessGateway, Api]) -> None:
    _, api = forever
    key = await api.tenant("acme")
    r = await api.signed(key, "GET", "/v1/queues/q/retention")
    assert r.status == 200
    assert r.body == {
        "queue": "q",
        "effective": {"succeeded_seconds": None, "cancelled_seconds": None, "dead_seconds": 1},
    }
    # a PUT replaces the scope's policy whole: fields it leaves out inherit again
    await api.signed(key, "PUT", "/v1/queues/q/retention", {"succeeded_seconds": 60, "cancelled_seconds": 5})
    r = await api.signed(key, "PUT", "/v1/queues/q/retention", {"cancelled_seconds": None})
    assert r.body == {
        "queue": "q",
        "cancelled_seconds": None,
        "effective": {"succeeded_seconds": None, "cancelled_seconds": None, "dead_seconds": 1},
    }
    assert (await api.signed(key, "GET", "/v1/queues/q/retention")).body == r.body
    # a tenant-wide value shows through a queue that does not set it
    await api.signed(key, "PUT", "/v1/retention", {"succeeded_seconds": 7})
    r = await api.signed(key, "GET", "/v1/queues/q/retention")
    assert r.body["effective"] == {"succeeded_seconds": 7, "cancelled_seconds": None, "dead_seconds": 1}

    for body, field in (
        ({"succeeded_seconds": -1}, "succeeded_seconds"),
        ({"dead_seconds": "60"}, "dead_seconds"),
        ({"dead_seconds": 10**10}, "dead_seconds"),
        ({"kept_seconds": 1}, None),
    ):
        r = await api.signed(key, "PUT", "/v1/retention", body)
        assert r.status == 422, (body, r.body)
        if field:
            assert r.body["field"] == field
    assert (await api.signed(key, "DELETE", "/v1/queues/q/retention")).status == 204
    assert (await api.signed(key, "DELETE", "/v1/queues/q/retention")).status == 404
    assert (await api.signed(key, "GET", "/v1/queues/-bad/retention")).status == 404
    # policies are the tenant's own: another tenant sees none of them
    other = await api.tenant("other")
    r = await api.signed(other, "GET", "/v1/retention")
    assert r.body == {
        "queue": None,
        "effective": {"succeeded_seconds": None, "cancelled_seconds": None, "dead_seconds": 1},
    }
    worker = await api.worker_key()
    assert (await api.signed(worker, "GET", "/v1/retention")).status == 403


# --- the database statements ------------------------------------------------------------------


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    c = await db.connect(database_url)
    await c.execute("INSERT INTO tenants (id) VALUES ('a'), ('b')")
    try:
        yield c
    finally:
        await c.close()


async def _finished(conn: Any, tenant: str, queue: str, state: str, age_seconds: float, n: int = 1) -> list[int]:
    """Jobs that finished `age_seconds` ago, written directly."""
    rows = await conn.fetch(
        """INSERT INTO jobs (tenant_id, queue, state, attempts, max_attempts, started_at, finished_at)
           SELECT $1, $2, $3::job_state, 1, 1, now(), now() - make_interval(secs => $4)
             FROM generate_series(1, $5) RETURNING id""",
        tenant,
        queue,
        state,
        age_seconds,
        n,
    )
    return [r["id"] for r in rows]


DEFAULTS = {JobState.SUCCEEDED: 3600, JobState.CANCELLED: 3600, JobState.DEAD: None}


async def _prune_all(conn: Any, defaults: dict[JobState, int | None] = DEFAULTS, batch: int = 1000) -> int:
    total = 0
    while True:
        due = [g for g in await db.job_retention_scan(conn, defaults) if g.due_in < 0]
        n = sum(p.count for p in await db.job_prune(conn, due, batch)) if due else 0
        if n == 0:
            return total
        total += n


async def _left(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM jobs"))


async def test_the_scan_resolves_each_state_by_queue_then_tenant_then_deployment(conn: Any) -> None:
    async with conn.transaction():
        await db.retention_policy_put(conn, "a", db.TENANT_WIDE, {JobState.SUCCEEDED: 60, JobState.DEAD: 10})
    async with conn.transaction():
        await db.retention_policy_put(conn, "a", "q", {JobState.SUCCEEDED: None, JobState.CANCELLED: 0})
    for tenant in ("a", "b"):
        for queue in ("q", "r"):
            for state in ("succeeded", "cancelled", "dead"):
                await _finished(conn, tenant, queue, state, 30)
    got = {(g.tenant_id, g.queue, g.state.value): g.keep_seconds for g in await db.job_retention_scan(conn, DEFAULTS)}
    assert got == {
        # a/q: succeeded kept for ever by the queue (absent), cancelled 0 by the queue, dead from the tenant
        ("a", "q", "cancelled"): 0,
        ("a", "q", "dead"): 10,
        # a/r: the tenant's succeeded and dead, the deployment's cancelled
        ("a", "r", "succeeded"): 60,
        ("a", "r", "cancelled"): 3600,
        ("a", "r", "dead"): 10,
        # b: the deployment's (dead kept for ever)
        ("b", "q", "succeeded"): 3600,
        ("b", "q", "cancelled"): 3600,
        ("b", "r", "succeeded"): 3600,
        ("b", "r", "cancelled"): 3600,
    }
    assert await _prune_all(conn) == 3  # a/q cancelled and dead, a/r dead: all 30 s old
    # the API's own resolution agrees
    force = db.retention_in_force(await db.retention_policy_get(conn, "a", "q"), DEFAULTS)
    assert force == {JobState.SUCCEEDED: None, JobState.CANCELLED: 0, JobState.DEAD: 10}


async def test_pruning_goes_in_batches_and_spares_what_it_must(conn: Any) -> None:
    old = await _finished(conn, "a", "q", "succeeded", 7200, n=2500)
    young = await _finished(conn, "a", "q", "succeeded", 60, n=5)
    await conn.execute("INSERT INTO jobs (tenant_id, queue, state, max_attempts) VALUES ('a', 'q', 'ready', 1)")
    due = [g for g in await db.job_retention_scan(conn, DEFAULTS) if g.due_in < 0]
    assert len(due) == 1 and due[0].due_in < -3500
    assert sum(p.count for p in await db.job_prune(conn, due, 1000)) == 1000
    assert await _prune_all(conn, batch=1000) == 1500
    left = {r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE state = 'succeeded'")}
    assert left == set(young) and not left & set(old)
    assert await _left(conn) == 6


async def test_pruning_skips_jobs_another_transaction_holds(conn: Any, database_url: str) -> None:
    held, _ = await _finished(conn, "a", "q", "dead", 7200, n=2)
    other = await db.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held)
            # a replay holding the row is not waited for
            assert await asyncio.wait_for(_prune_all(conn, {**DEFAULTS, JobState.DEAD: 60}), 5) == 1
        assert await _prune_all(conn, {**DEFAULTS, JobState.DEAD: 60}) == 1
    finally:
        await other.close()
    assert await _left(conn) == 0


async def test_a_pruned_cron_job_leaves_its_fire_record_without_a_job(conn: Any) -> None:
    (job_id,) = await _finished(conn, "a", "q", "succeeded", 7200)
    schedule_id = await conn.fetchval(
        "INSERT INTO schedules (tenant_id, name, cron, queue, next_fire_at) VALUES ('a', 's', '* * * * *', 'q', now())"
        " RETURNING id"
    )
    await conn.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, job_id) VALUES ($1, now(), $2), ($1, now() - interval '1 minute', NULL)",
        schedule_id,
        job_id,
    )
    assert await _prune_all(conn) == 1
    fires = await conn.fetch("SELECT job_id FROM schedule_fires")
    assert [f["job_id"] for f in fires] == [None, None]  # the due times stay claimed


async def test_a_resubmit_racing_the_pruner_gets_a_new_job_not_an_error(conn: Any, database_url: str) -> None:
    """The submit's insert skips the key of a finished job; the pruner deletes that job before
    the submit looks it up: the key is free, so the submit creates the job."""
    (old,) = await _finished(conn, "a", "q", "succeeded", 7200)
    await conn.execute("UPDATE jobs SET idempotency_key = 'k' WHERE id = $1", old)
    pruner = await db.connect(database_url)

    class PrunedBetween:
        """The connection, with the pruner run right after the first statement."""

        def __init__(self) -> None:
            self.statements = 0

        async def fetch(self, query: str, *args: Any) -> Any:
            rows = await conn.fetch(query, *args)
            self.statements += 1
            if self.statements == 1:
                assert await _prune_all(pruner) == 1
            return rows

    try:
        job = db.NewJob(queue="q", kind="", payload={}, priority=0, idempotency_key="k")
        (got,) = await db.job_insert_many(PrunedBetween(), "a", [job], default_max_attempts=3)  # type: ignore[arg-type]
    finally:
        await pruner.close()
    assert got.created and got.job.id != str(old) and got.job.state is JobState.READY


async def test_one_gateway_prunes_at_a_time(forever: tuple[InProcessGateway, Api], database_url: str) -> None:
    gw, _ = forever
    other = await db.connect(database_url)

    async def locked() -> bool:
        # the gateway's own pruner may hold the lock for a moment
        tx = other.transaction()
        await tx.start()
        if await db.job_prune_lock(other):
            return True
        await tx.rollback()
        return False

    try:
        await eventually(locked)
        gw.runtime.metrics.job_retention_lag = 5.0
        result = await job_pruner.prune_jobs(gw.runtime)
        assert result.locked_out and not result.pruned
        assert gw.runtime.metrics.job_retention_lag == 0.0  # the holder reports the lag
    finally:
        await other.close()

    async def prunes() -> bool:
        return not (await job_pruner.prune_jobs(gw.runtime)).locked_out

    await eventually(prunes)


# --- plans -------------------------------------------------------------------------------------

SEED = """
INSERT INTO tenants (id) SELECT 't' || g FROM generate_series(1, 20) g;
INSERT INTO jobs (tenant_id, queue, state, attempts, max_attempts, started_at, finished_at, lease_token, lease_expires_at)
SELECT 't' || (1 + g % 20), 'q' || (g % 5), s.state::job_state, 1, 1, now(),
       CASE WHEN s.state IN ('succeeded', 'dead', 'cancelled') THEN now() - (g % 86400) * interval '1 second' END,
       CASE WHEN s.state = 'running' THEN g END,
       CASE WHEN s.state = 'running' THEN now() + interval '1 minute' END
  FROM generate_series(1, 40000) g
 CROSS JOIN LATERAL (SELECT CASE WHEN g % 10 = 0 THEN 'ready' WHEN g % 10 = 1 THEN 'running'
                                 WHEN g % 10 = 2 THEN 'dead' WHEN g % 10 = 3 THEN 'cancelled'
                                 ELSE 'succeeded' END AS state) s;
"""


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(conn: Any, statement: str, *args: Any) -> set[str]:
    """The indexes a generic plan of `statement` reads; fails on a sequential scan of jobs."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, *args)
    nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "jobs"]
    assert not seq, f"sequential scan of jobs:\n{raw}"
    return {n["Index Name"] for n in nodes if "Index Name" in n}


async def test_the_pruner_finds_finished_jobs_by_the_finished_index(database_url: str) -> None:
    from db._queries import sql

    c = await db.connect(database_url)
    try:
        await c.execute(SEED)
        await c.execute("VACUUM ANALYZE jobs")
        states = list(db.RETAINED_STATES)
        assert "jobs_finished" in await _plan(c, sql("job_retention_scan"), states, [3600.0, None, 60.0])
        args = (["t1", "t2"], ["q1", "q2"], [JobState.SUCCEEDED, JobState.DEAD], [3600.0, 60.0], 1000)
        # the delete itself goes by primary key
        assert {"jobs_finished", "jobs_pkey"} <= await _plan(c, sql("job_prune"), *args)
    finally:
        await c.close()


# --- settings ------------------------------------------------------------------------------------


def test_deployment_retention_comes_from_the_environment() -> None:
    d = load_settings({})
    assert (d.retain_succeeded_seconds, d.retain_cancelled_seconds, d.retain_dead_seconds) == (
        86_400,
        7 * 86_400,
        30 * 86_400,
    )
    s = load_settings(
        {
            "ORCH_RETAIN_SUCCEEDED_SECONDS": "0",
            "ORCH_RETAIN_CANCELLED_SECONDS": " Forever ",
            "ORCH_RETAIN_DEAD_SECONDS": "",
        }
    )
    assert (s.retain_succeeded_seconds, s.retain_cancelled_seconds, s.retain_dead_seconds) == (0, None, 30 * 86_400)
    for bad in ("none", "-1", "1.5", "1e3", "²", str(10**10)):
        with pytest.raises(ValueError, match="ORCH_RETAIN_DEAD_SECONDS"):
            load_settings({"ORCH_RETAIN_DEAD_SECONDS": bad})
