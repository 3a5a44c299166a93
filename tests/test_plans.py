"""The hot statements keep their plans: index scans, never a sequential scan of jobs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import db
from db._queries import sql

pytestmark = pytest.mark.timeout(120)

SEED = """
INSERT INTO tenants (id, weight, max_inflight)
SELECT 't' || g, 1 + g % 3, CASE WHEN g % 4 = 0 THEN 50 END FROM generate_series(1, 20) g;
INSERT INTO jobs (tenant_id, queue, payload, priority, state, attempts, max_attempts, run_at, started_at, finished_at,
                  lease_token, lease_expires_at)
SELECT 't' || (1 + (g / 50) % 20), 'q' || ((g / 7) % 4), '{}', g % 3,
       s.state::job_state,
       CASE WHEN s.state IN ('running', 'succeeded') THEN 1 ELSE 0 END, 5,
       now() + CASE WHEN s.state = 'scheduled' THEN interval '1 hour' ELSE interval '0' END,
       CASE WHEN s.state IN ('running', 'succeeded') THEN now() END,
       CASE WHEN s.state = 'succeeded' THEN now() END,
       CASE WHEN s.state = 'running' THEN g END,
       CASE WHEN s.state = 'running' THEN now() + (g % 600) * interval '1 second' END
  FROM generate_series(1, 40000) g
 CROSS JOIN LATERAL (SELECT CASE WHEN g % 20 = 0 THEN 'ready' WHEN g % 50 = 1 THEN 'running'
                                 WHEN g % 50 = 2 THEN 'scheduled' ELSE 'succeeded' END AS state) s;
"""


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    c = await db.connect(database_url)
    await c.execute(SEED)
    await c.execute("VACUUM ANALYZE jobs")
    await c.execute("ANALYZE")
    try:
        yield c
    finally:
        await c.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(conn: Any, statement: str, *args: Any) -> list[dict[str, Any]]:
    # Generic plans are what a long-lived prepared statement ends up with: check those.
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, *args)
    nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "jobs"]
    assert not seq, f"sequential scan of jobs:\n{raw}"
    return nodes


def _indexes(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


def _params(text: str, names: dict[str, str]) -> str:
    for name, param in names.items():
        text = text.replace(name, param)
    return text


async def test_lease_uses_the_ready_index_and_updates_by_primary_key(conn: Any) -> None:
    # orch_job_lease_slots: its two picks (oldest first, for the starvation guard; then by
    # priority), then the update of the picked rows, each as the function runs it.
    body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'orch_job_lease_slots'")
    picks = ["SELECT " + part.split(";", 1)[0] for part in body.split("v_ids := ")[1:]]
    fifo, by_priority = (
        _params(p, {"p_tenant": "$1::text", "p_queues": "$2::text[]", "v_limit": "$3::int"}) for p in picks
    )
    args = ("t5", ["q1", "q2"], 10)
    assert "jobs_ready" in _indexes(await _plan(conn, by_priority, *args))
    assert "jobs_ready_fifo" in _indexes(await _plan(conn, fifo, *args))
    update = body.split("RETURN QUERY", 1)[1].split(";", 1)[0]
    update = _params(
        update,
        {
            "p_workers": "($1::text[])",
            "v_ids": "($2::bigint[])",
            "p_lease_seconds": "$3::int",
            "p_pass_floor": "$4::float8",
            "p_tenant": "$5::text",
        },
    )
    assert "jobs_pkey" in _indexes(await _plan(conn, update, ["w"] * 3, [1, 51, 101], 30, 1.0, "t5"))


async def test_tenant_pick_reads_no_jobs_but_the_running_index(conn: Any) -> None:
    # The pick is the body of orch_tenant_pick, which runs it with a generic plan.
    body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'orch_tenant_pick'")
    query = body.split("RETURN QUERY", 1)[1].split(";", 1)[0]
    query = query.replace("p_queues", "$1::text[]").replace("p_limit", "$2::int")
    nodes = await _plan(conn, query, ["q0", "q1", "q2", "q3"], 8)
    jobs_nodes = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert {n["Index Name"] for n in jobs_nodes} <= {"jobs_running_tenant"}, jobs_nodes


async def test_tenant_pick_walks_tenants_in_pass_order_however_many_there_are(conn: Any) -> None:
    # 10,000 tenants with work waiting: the pick reads a few entries of tenants_pass, not them all.
    await conn.execute(
        """INSERT INTO tenants (id, vpass) SELECT 'many' || g, g * 0.5 FROM generate_series(1, 10000) g;
           INSERT INTO runnable_queues (tenant_id, queue) SELECT 'many' || g, 'q0' FROM generate_series(1, 10000) g;
           ANALYZE tenants; ANALYZE runnable_queues"""
    )
    body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'orch_tenant_pick'")
    query = body.split("RETURN QUERY", 1)[1].split(";", 1)[0]
    query = query.replace("p_queues", "$1::text[]").replace("p_limit", "$2::int")
    nodes = await _plan(conn, query, ["q0"], 8)
    tenant_scans = [n for n in nodes if n.get("Relation Name") == "tenants"]
    assert tenant_scans and all(n.get("Index Name") == "tenants_pass" for n in tenant_scans), tenant_scans
    picked = await conn.fetch("SELECT * FROM orch_tenant_pick($1, 8)", ["q0"])
    # the least served first; the lead pass is the highest among the eligible
    passes = [r["vpass"] for r in picked]
    assert len(picked) == 8 and passes == sorted(passes), picked
    assert all(r["lead_pass"] == 5000.0 for r in picked)


async def test_tenant_pick_walks_past_no_idle_tenant(conn: Any) -> None:
    # 5,000 tenants without work, their passes below every busy tenant's (idle tenants keep the
    # pass they had): the pick's walk reads none of them.
    await conn.execute(
        """INSERT INTO tenants (id, vpass) SELECT 'idle' || g, -1 FROM generate_series(1, 5000) g;
           ANALYZE tenants"""
    )
    busy = await conn.fetchval("SELECT count(*) FROM tenants WHERE runnable")
    body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'orch_tenant_pick'")
    query = body.split("RETURN QUERY", 1)[1].split(";", 1)[0]
    query = query.replace("p_queues", "$1::text[]").replace("p_limit", "$2::int")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + query, ["q0", "q1", "q2", "q3"], 8)
    scans = [n for n in _nodes(json.loads(raw)[0]["Plan"]) if n.get("Relation Name") == "tenants"]
    assert scans and all(n.get("Index Name") == "tenants_pass" for n in scans), scans
    read = sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0) for n in scans)
    # at most every busy tenant once from each end (the pick and the lead pass), none of the idle
    assert 0 < busy <= 20 and read <= 2 * busy, (busy, read, scans)


async def test_a_tenant_is_runnable_while_it_has_a_runnable_pair(conn: Any, database_url: str) -> None:
    async def runnable() -> bool:
        return bool(await conn.fetchval("SELECT runnable FROM tenants WHERE id = 'flag'"))

    insert = """INSERT INTO jobs (tenant_id, queue, payload, priority, state, max_attempts, run_at)
                VALUES ('flag', $1, '{}', 0, 'ready', 5, now())"""
    await conn.execute("INSERT INTO tenants (id) VALUES ('flag')")
    assert not await runnable()
    await conn.execute(insert, "a")
    await conn.execute(insert, "b")
    assert await runnable()
    await conn.execute(
        "UPDATE jobs SET state = 'succeeded', attempts = 1, started_at = now(), finished_at = now() WHERE tenant_id = 'flag'"
    )
    assert await conn.fetchval("SELECT orch_runnable_forget('flag', ARRAY['a'])") == 1
    assert await runnable(), "queue b is still runnable"
    # A transaction making a pair runnable holds the tenant's key shared until it commits: the
    # flag is then left set (a pick passes over the tenant), never cleared under it.
    other = await db.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock_shared(orch_tenant_lock_key('flag'))")
            assert await conn.fetchval("SELECT orch_runnable_forget('flag', ARRAY['b'])") == 1
            assert await runnable()
    finally:
        await other.close()
    await conn.execute(insert, "c")
    await conn.execute(
        "UPDATE jobs SET state = 'succeeded', attempts = 1, started_at = now(), finished_at = now() WHERE tenant_id = 'flag'"
    )
    assert await conn.fetchval("SELECT orch_runnable_forget('flag', ARRAY['c'])") == 1
    assert not await runnable(), "no pair left"
    await conn.execute(insert, "a")
    assert await runnable()


async def test_forgetting_a_pair_probes_the_ready_index(conn: Any) -> None:
    # The check inside orch_runnable_forget, one pair at a time, with a generic plan.
    body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'orch_runnable_forget'")
    probe = body.split("CONTINUE WHEN EXISTS (", 1)[1].split(");", 1)[0]
    probe = probe.replace("p_tenant", "$1::text").replace("j.queue = q ", "j.queue = $2::text ")
    assert "$2" in probe, probe
    assert _indexes(await _plan(conn, probe, "t5", "q1")) & {"jobs_ready", "jobs_ready_fifo"}


async def test_complete_fail_heartbeat_and_reap_use_their_indexes(conn: Any) -> None:
    ids, tokens = [1, 51, 101], [1, 51, 101]
    assert "jobs_pkey" in _indexes(await _plan(conn, sql("job_complete_many"), ids, tokens, [None] * 3, None))
    fail_args = (ids, tokens, ["e"] * 3, [True] * 3, [None] * 3, [0.5] * 3, 1000, 60000, None, [False] * 3)
    assert "jobs_pkey" in _indexes(await _plan(conn, sql("job_fail_many"), *fail_args))
    # a tenant's heartbeat may find its job by (tenant, state, id) just as directly as by id
    assert _indexes(await _plan(conn, sql("job_heartbeat"), 1, 1, 30, "t1")) & {"jobs_pkey", "jobs_tenant_state_recent"}
    assert "jobs_running_expiry" in _indexes(await _plan(conn, sql("job_reap_expired"), 100, 1000, 60000))
    assert "jobs_scheduled" in _indexes(await _plan(conn, sql("job_promote_due"), 100))
