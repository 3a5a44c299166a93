"""The operator's API beyond tenants and keys: key listings, jobs across tenants (filters,
pagination, detail, cancel and retry), deleting a tenant, workers, queues, schedules and
webhooks across tenants; and the plans of the job listings on a large table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest

import db
from core import Settings
from db._queries import sql

from .support import Api, fetchval

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Webhooks may point at loopback (a closed port: nothing is delivered).
    return msgspec.structs.replace(settings, webhook_allow_hosts=("127.0.0.1",))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _problem(r: Any, status: int) -> str:
    assert r.status == status, (r.status, r.body)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.body["status"] == status
    detail: str = r.body["detail"]
    return detail


async def _submit(api: Api, key: str, **fields: Any) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/jobs", {"payload": {}, **fields})
    assert r.status == 201, r.body
    job: dict[str, Any] = r.body
    return job


async def _lease(api: Api, key: str, worker_id: str, n: int = 1, queues: list[str] | None = None) -> list[Any]:
    body: dict[str, Any] = {"worker_id": worker_id, "max_jobs": n, "wait_ms": 0, "queues": queues or ["default"]}
    r = await api.signed(key, "POST", "/v1/workers/lease", body)
    assert r.status == 200, r.body
    jobs: list[Any] = r.body["jobs"]
    return jobs


async def _all_pages(api: Api, query: str, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    for _ in range(100):
        r = await api.admin("GET", f"/v1/admin/jobs?limit={limit}{query}{after}")
        assert r.status == 200, r.body
        assert len(r.body["jobs"]) <= limit
        out.extend(r.body["jobs"])
        if r.body["next"] is None:
            return out
        after = f"&after={r.body['next']}"
    raise AssertionError("pagination did not end")


async def test_a_tenants_keys_are_listed_without_secrets(api: Api) -> None:
    first = await api.tenant("acme")
    r = await api.admin("POST", "/v1/admin/tenants/acme/keys")
    second = r.body["api_key"]
    assert (await api.admin("DELETE", f"/v1/admin/keys/{first.split('.')[0]}")).status == 204
    await api.tenant("other")

    r = await api.admin("GET", "/v1/admin/tenants/acme/keys")
    assert r.status == 200, r.body
    keys = {k["key_id"]: k for k in r.body["keys"]}
    assert set(keys) == {first.split(".")[0], second.split(".")[0]}
    assert keys[first.split(".")[0]]["revoked"] is True and keys[first.split(".")[0]]["revoked_at"]
    assert keys[second.split(".")[0]]["revoked"] is False and keys[second.split(".")[0]]["revoked_at"] is None
    assert all(k["tenant_id"] == "acme" and k["created_at"] for k in keys.values())
    for key in (first, second):
        assert key.split(".", 1)[1].encode() not in r.raw
    assert "secret" not in r.raw.decode()

    assert "no tenant nope" in _problem(await api.admin("GET", "/v1/admin/tenants/nope/keys"), 404)
    _problem(await api.admin("GET", "/v1/admin/tenants/bad%20id/keys"), 404)
    _problem(await api.admin("GET", "/v1/admin/tenants/acme/keys", token="wrong"), 401)


async def test_jobs_across_tenants_filter_and_page_newest_first(api: Api) -> None:
    a, b = await api.tenant("a"), await api.tenant("b")
    made: list[dict[str, Any]] = []
    for i in range(7):
        made.append(await _submit(api, a, queue="mail" if i % 2 else "default", kind=f"k{i % 3}"))
        made.append(await _submit(api, b, queue="default", kind="k0", idempotency_key=f"key-{i}"))
    (leased,) = await _lease(api, b, "w-b")
    ids = [j["id"] for j in made]

    # every job once, newest first, across pages of 3
    every = await _all_pages(api, "", 3)
    assert [j["id"] for j in every] == sorted(ids, key=int, reverse=True)

    def expect(pred: Any) -> list[str]:
        return [j["id"] for j in sorted(made, key=lambda j: int(j["id"]), reverse=True) if pred(j)]

    assert [j["id"] for j in await _all_pages(api, "&tenant=a", 2)] == expect(lambda j: j["tenant_id"] == "a")
    assert [j["id"] for j in await _all_pages(api, "&queue=mail", 2)] == expect(lambda j: j["queue"] == "mail")
    assert [j["id"] for j in await _all_pages(api, "&tenant=a&kind=k1", 1)] == expect(
        lambda j: j["tenant_id"] == "a" and j["kind"] == "k1"
    )
    assert [j["id"] for j in await _all_pages(api, "&kind=k0", 2)] == expect(lambda j: j["kind"] == "k0")
    running = await _all_pages(api, "&state=running", 2)
    assert [j["id"] for j in running] == [leased["id"]]
    assert running[0]["worker_id"] == "w-b" and running[0]["lease_expires_at"] and running[0]["lease_token"]
    ready_b = await _all_pages(api, "&tenant=b&state=ready", 2)
    assert [j["id"] for j in ready_b] == expect(lambda j: j["tenant_id"] == "b" and j["id"] != leased["id"])
    ready = await _all_pages(api, "&state=ready", 4)
    assert [j["id"] for j in ready] == expect(lambda j: j["id"] != leased["id"])
    assert [j["id"] for j in await _all_pages(api, "&idempotency_key=key-3", 5)] == [made[7]["id"]]
    assert [j["id"] for j in await _all_pages(api, "&tenant=b&idempotency_key=key-3", 5)] == [made[7]["id"]]
    assert await _all_pages(api, "&tenant=a&idempotency_key=key-3", 5) == []
    assert [j["id"] for j in await _all_pages(api, f"&id={made[4]['id']}", 5)] == [made[4]["id"]]
    assert await _all_pages(api, f"&id={made[4]['id']}&tenant=b", 5) == []
    assert await _all_pages(api, "&tenant=nobody", 5) == []

    assert "state must be one of" in _problem(await api.admin("GET", "/v1/admin/jobs?state=lost"), 422)
    assert (await api.admin("GET", "/v1/admin/jobs?id=x1")).body["field"] == "id"
    _problem(await api.admin("GET", "/v1/admin/jobs?after=-3"), 422)
    _problem(await api.admin("GET", "/v1/admin/jobs?limit=0"), 422)
    _problem(await api.admin("GET", "/v1/admin/jobs?limit=1e2"), 422)
    _problem(await api.admin("GET", "/v1/admin/jobs?limit=1001"), 422)


async def test_a_jobs_detail_has_its_lease_and_events(api: Api) -> None:
    key = await api.tenant("acme")
    job = await _submit(api, key, kind="report")
    (leased,) = await _lease(api, key, "worker-7")
    r = await api.admin("GET", f"/v1/admin/jobs/{job['id']}")
    assert r.status == 200, r.body
    detail = r.body["job"]
    assert detail["id"] == job["id"] and detail["state"] == "running" and detail["tenant_id"] == "acme"
    assert detail["worker_id"] == "worker-7" and detail["lease_token"] == leased["lease_token"]
    assert detail["lease_expires_at"] == leased["lease_expires_at"]
    assert [e["type"] for e in r.body["events"]] == ["job.created", "job.started"]
    assert r.body["events"][1]["data"]["worker_id"] == "worker-7" and r.body["events_truncated"] is False

    fail = {"lease_token": leased["lease_token"], "error": "boom", "retryable": False}
    assert (await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", fail)).status == 200
    r = await api.admin("GET", f"/v1/admin/jobs/{job['id']}")
    assert r.body["job"]["state"] == "dead" and r.body["job"]["lease_expires_at"] is None
    assert r.body["job"]["worker_id"] == "worker-7"  # who ran it last
    assert [e["type"] for e in r.body["events"]] == ["job.created", "job.started", "job.dead"]

    _problem(await api.admin("GET", "/v1/admin/jobs/999999"), 404)
    _problem(await api.admin("GET", "/v1/admin/jobs/12ab"), 404)


async def test_the_operator_cancels_and_retries_any_tenants_job(api: Api) -> None:
    key = await api.tenant("acme")
    ready = await _submit(api, key)
    r = await api.admin("POST", f"/v1/admin/jobs/{ready['id']}/cancel")
    assert r.status == 200 and r.body["state"] == "cancelled", r.body
    assert "cancelled job cannot be cancelled" in _problem(
        await api.admin("POST", f"/v1/admin/jobs/{ready['id']}/cancel"), 409
    )
    r = await api.admin("POST", f"/v1/admin/jobs/{ready['id']}/retry")
    assert r.status == 200 and r.body["state"] == "ready" and r.body["attempts"] == 0, r.body
    assert "only dead or cancelled" in _problem(await api.admin("POST", f"/v1/admin/jobs/{ready['id']}/retry"), 409)

    (running,) = await _lease(api, key, "w")
    r = await api.admin("POST", f"/v1/admin/jobs/{running['id']}/cancel")
    assert r.status == 200 and r.body["state"] == "running" and r.body["cancel_requested"] is True, r.body
    hb = await api.signed(key, "POST", f"/v1/jobs/{running['id']}/heartbeat", {"lease_token": running["lease_token"]})
    assert hb.body["cancel_requested"] is True

    _problem(await api.admin("POST", "/v1/admin/jobs/424242/cancel"), 404)
    _problem(await api.admin("POST", "/v1/admin/jobs/424242/retry"), 404)
    _problem(await api.admin("POST", "/v1/admin/jobs/x/retry"), 404)


async def _tenant_rows(database_url: str, tenant_id: str) -> dict[str, int]:
    counts = {}
    for table in ("jobs", "events", "api_keys", "schedules", "webhooks", "consumers", "retry_policies", "queue_pauses"):
        counts[table] = await fetchval(database_url, f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id)
    return counts


async def test_deleting_a_tenant_refuses_running_jobs_unless_forced(api: Api, database_url: str) -> None:
    key = await api.tenant("doomed")
    keep = await api.tenant("kept")
    for _ in range(3):
        await _submit(api, key)
    await _submit(api, keep)
    (running,) = await _lease(api, key, "w")
    r = await api.signed(key, "POST", "/v1/schedules", {"name": "nightly", "cron": "0 3 * * *"})
    assert r.status == 201, r.body
    r = await api.signed(key, "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/hook"})
    assert r.status == 201, r.body
    assert (await api.signed(key, "POST", "/v1/consumers", {"name": "etl"})).status == 201
    assert (await api.signed(key, "PUT", "/v1/retry-policy", {"max_attempts": 3})).status == 200
    assert (await api.admin("POST", "/v1/admin/tenants/doomed/queues/default/pause")).status == 200
    before = await _tenant_rows(database_url, "doomed")
    assert all(before.values()), before

    detail = _problem(await api.admin("DELETE", "/v1/admin/tenants/doomed"), 409)
    assert "1 running job" in detail and "force=true" in detail
    assert await _tenant_rows(database_url, "doomed") == before
    r = await api.admin("GET", "/v1/admin/tenants/doomed")
    assert r.body["disabled"] is False  # refusing changed nothing

    r = await api.admin("DELETE", "/v1/admin/tenants/doomed?force=true")
    assert r.status == 200, r.body
    assert r.body == {
        "tenant_id": "doomed",
        "jobs": 3,
        "running_jobs": 1,
        "keys": 1,
        "schedules": 1,
        "webhooks": 1,
        "consumers": 1,
        "events": before["events"],
    }
    assert set((await _tenant_rows(database_url, "doomed")).values()) == {0}
    assert await fetchval(database_url, "SELECT count(*) FROM event_retention WHERE tenant_id = 'doomed'") == 0
    _problem(await api.admin("GET", "/v1/admin/tenants/doomed"), 404)
    _problem(await api.admin("DELETE", "/v1/admin/tenants/doomed"), 404)
    _problem(await api.signed(key, "GET", "/v1/jobs"), 401)
    _problem(await api.admin("GET", f"/v1/admin/jobs/{running['id']}"), 404)

    # the same id again starts empty: none of the old tenant's events or jobs
    again = await api.tenant("doomed")
    r = await api.signed(again, "GET", "/v1/events")
    assert r.status == 200 and r.body["events"] == [], r.body
    assert (await api.signed(again, "GET", "/v1/jobs")).body["jobs"] == []
    # the other tenant is untouched
    assert len((await api.signed(keep, "GET", "/v1/jobs")).body["jobs"]) == 1


async def test_deleting_an_idle_tenant_needs_no_force(api: Api) -> None:
    key = await api.tenant("idle")
    job = await _submit(api, key)
    r = await api.admin("DELETE", "/v1/admin/tenants/idle")
    assert r.status == 200 and r.body["jobs"] == 1 and r.body["running_jobs"] == 0, r.body
    _problem(await api.admin("GET", f"/v1/admin/jobs/{job['id']}"), 404)
    _problem(await api.admin("DELETE", "/v1/admin/tenants/no%20such"), 404)


async def test_workers_holding_leases_are_listed(api: Api) -> None:
    a, b = await api.tenant("a"), await api.tenant("b")
    for _ in range(3):
        await _submit(api, a)
    await _submit(api, b, queue="mail")
    shared = await api.worker_key()
    assert (await api.admin("GET", "/v1/admin/workers")).body == {"workers": []}
    two = await _lease(api, a, "alpha", n=2)
    (one,) = await _lease(api, shared, "beta", queues=["mail"])
    assert one["tenant_id"] == "b"
    (also,) = await _lease(api, a, "beta")

    r = await api.admin("GET", "/v1/admin/workers")
    assert r.status == 200, r.body
    by_id = {w["worker_id"]: w for w in r.body["workers"]}
    assert set(by_id) == {"alpha", "beta"}
    assert by_id["alpha"]["leases"] == 2 and by_id["alpha"]["tenants"] == ["a"] and by_id["alpha"]["expired"] == 0
    assert by_id["beta"]["leases"] == 2 and by_id["beta"]["tenants"] == ["a", "b"]
    assert by_id["beta"]["queues"] == ["default", "mail"]
    assert _at(by_id["beta"]["last_leased_at"]) >= _at(by_id["alpha"]["last_leased_at"])
    assert by_id["alpha"]["next_expiry_at"] == min(j["lease_expires_at"] for j in two)
    only_b = (await api.admin("GET", "/v1/admin/workers?tenant=b")).body["workers"]
    assert [(w["worker_id"], w["leases"]) for w in only_b] == [("beta", 1)]

    for job in [*two, also]:
        done = {"lease_token": job["lease_token"]}
        assert (await api.signed(a, "POST", f"/v1/jobs/{job['id']}/complete", done)).status == 200
    r = await api.admin("GET", "/v1/admin/workers")
    assert [(w["worker_id"], w["leases"]) for w in r.body["workers"]] == [("beta", 1)]


async def test_queues_schedules_and_webhooks_across_tenants(api: Api) -> None:
    a, b = await api.tenant("a"), await api.tenant("b")
    await _submit(api, a, queue="mail")
    await _submit(api, a, queue="mail", delay_ms=3_600_000)
    await _submit(api, b)
    assert (await api.admin("POST", "/v1/admin/tenants/b/queues/idle/pause")).status == 200
    r = await api.admin("GET", "/v1/admin/queues")
    assert r.status == 200, r.body
    rows = [(q["tenant_id"], q["queue"], q["paused"], q["ready"], q["scheduled"]) for q in r.body["queues"]]
    assert rows == [("a", "mail", False, 1, 1), ("b", "default", False, 1, 0), ("b", "idle", True, 0, 0)]
    assert [q["queue"] for q in (await api.admin("GET", "/v1/admin/queues?tenant=b")).body["queues"]] == [
        "default",
        "idle",
    ]

    for key, names in ((a, ["s1", "s2"]), (b, ["s3"])):
        for name in names:
            r = await api.signed(key, "POST", "/v1/schedules", {"name": name, "cron": "*/5 * * * *"})
            assert r.status == 201, r.body
    r = await api.admin("GET", "/v1/admin/schedules?limit=2")
    assert r.status == 200 and [s["name"] for s in r.body["schedules"]] == ["s1", "s2"], r.body
    r2 = await api.admin("GET", f"/v1/admin/schedules?limit=2&after={r.body['next']}")
    assert [(s["tenant_id"], s["name"]) for s in r2.body["schedules"]] == [("b", "s3")] and r2.body["next"] is None
    r = await api.admin("GET", "/v1/admin/schedules?tenant=b")
    assert [s["name"] for s in r.body["schedules"]] == ["s3"]

    for key in (a, b, b):
        r = await api.signed(key, "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/hook"})
        assert r.status == 201 and r.body["secret"], r.body
    r = await api.admin("GET", "/v1/admin/webhooks")
    assert r.status == 200, r.body
    assert [w["tenant_id"] for w in r.body["webhooks"]] == ["a", "b", "b"]
    assert all(w["secret"] is None for w in r.body["webhooks"])
    r = await api.admin("GET", "/v1/admin/webhooks?tenant=b&limit=1")
    assert len(r.body["webhooks"]) == 1 and r.body["next"] is not None
    r = await api.admin("GET", f"/v1/admin/webhooks?tenant=b&limit=1&after={r.body['next']}")
    assert len(r.body["webhooks"]) == 1 and r.body["next"] is None
    _problem(await api.admin("GET", "/v1/admin/webhooks?after=x"), 422)


# --- plans ----------------------------------------------------------------------------------

SEED = """
INSERT INTO tenants (id) SELECT 't' || g FROM generate_series(1, 50) g;
INSERT INTO jobs (tenant_id, queue, kind, payload, state, attempts, max_attempts, run_at, started_at, finished_at,
                  lease_token, lease_expires_at, worker_id, idempotency_key)
SELECT CASE WHEN g % 5 <> 0 THEN 't1' ELSE 't' || (2 + g % 49) END, 'q' || (g % 4), 'k' || (g % 5), '{}', s.state::job_state,
       CASE WHEN s.state IN ('running', 'succeeded', 'dead') THEN 1 ELSE 0 END, 5,
       now() + CASE WHEN s.state = 'scheduled' THEN interval '1 hour' ELSE interval '0' END,
       CASE WHEN s.state IN ('running', 'succeeded', 'dead') THEN now() END,
       CASE WHEN s.state IN ('succeeded', 'dead') THEN now() END,
       CASE WHEN s.state = 'running' THEN g END,
       CASE WHEN s.state = 'running' THEN now() + interval '30 seconds' END,
       CASE WHEN s.state <> 'ready' AND s.state <> 'scheduled' THEN 'w' || (g % 40) END,
       CASE WHEN g % 3 = 0 THEN 'idem-' || g END
  FROM generate_series(1, 200000) g
 CROSS JOIN LATERAL (SELECT CASE WHEN g % 20 = 0 THEN 'ready' WHEN g % 500 = 1 THEN 'running'
                                 WHEN g % 1000 = 2 THEN 'dead' WHEN g % 50 = 3 THEN 'scheduled'
                                 ELSE 'succeeded' END AS state) s;
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


async def _plan(conn: Any, statement: str, *args: Any, generic: bool = False) -> list[dict[str, Any]]:
    """The plan, run: it must read jobs through an index, and only a bounded number of its rows.
    The listings are planned for their values (`plan_for_values`); the worker listing keeps the
    generic plan a long-lived prepared statement ends up with."""
    await conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
    raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *args)
    nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
    jobs = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert jobs and not [n for n in jobs if n["Node Type"] == "Seq Scan"], f"sequential scan of jobs:\n{raw}"
    read = sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0) for n in jobs)
    assert read <= 2500, f"{read} rows of jobs read:\n{raw}"
    return nodes


def _indexes(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


async def test_job_listings_read_through_their_index(conn: Any) -> None:
    top = 200_000
    by_state = {"jobs_tenant_state_recent", "jobs_dead"}  # a custom plan may take the dead letters' own
    cases: list[tuple[str, tuple[Any, ...], set[str]]] = [
        ("admin_job_list_all", (top, None, None, 101), {"jobs_pkey"}),
        ("admin_job_list_all", (top, "q1", "k1", 101), {"jobs_pkey"}),
        ("admin_job_list_tenant", ("t7", top, None, None, 101), {"jobs_tenant_recent"}),
        ("admin_job_list_tenant", ("t7", top, "q3", None, 101), {"jobs_tenant_recent"}),
        ("admin_job_list_tenant_state", ("t7", "dead", top, None, None, 101), by_state),
        ("admin_job_list_tenant_state", ("t7", "ready", top, None, None, 101), by_state),
        ("admin_job_list_all_state", ("dead", top, None, None, 101), by_state),
        ("admin_job_list_all_state", ("running", 150_000, "q1", None, 101), by_state | {"jobs_running_tenant"}),
        ("admin_job_list_by_key", ("t1", "idem-3003", top, None, None, None), {"jobs_idempotency"}),
        ("admin_job_list_by_key_all", ("idem-3003", top, None, None, None, 101), {"jobs_idempotency"}),
        ("admin_job_list_by_id", (4242, top, None, None, None, None, None), {"jobs_pkey"}),
    ]
    for name, args, indexes in cases:
        used = _indexes(await _plan(conn, sql(name), *args))
        assert used & indexes, (name, args, used)
    # the rows a page returns, through the same functions
    dead = await db.job_admin_list(conn, db.JobFilter(state="dead"), before_id=None, limit=100)
    assert len(dead) == 100 and [int(j.id) for j in dead] == sorted((int(j.id) for j in dead), reverse=True)
    assert all(j.state == "dead" for j in dead)
    newest_dead = await fetch_ids(conn, "SELECT id FROM jobs WHERE state = 'dead' ORDER BY id DESC LIMIT 100")
    assert [int(j.id) for j in dead] == newest_dead


async def fetch_ids(conn: Any, query: str) -> list[int]:
    return [r["id"] for r in await conn.fetch(query)]


async def test_the_worker_listing_reads_only_running_jobs(conn: Any) -> None:
    nodes = await _plan(conn, sql("admin_worker_list"), None, generic=True)
    assert _indexes(nodes) & {"jobs_running_expiry", "jobs_running_tenant"}
    workers = await db.worker_list(conn, None)
    assert sum(w.leases for w in workers) == 400
