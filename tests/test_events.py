"""Every state change writes exactly one event, in the transaction of the change."""

from __future__ import annotations

import pytest

from .support import Api, fetch

pytestmark = pytest.mark.timeout(60)


async def _events(database_url: str, job_id: str) -> list[tuple[str, dict[str, object]]]:
    rows = await fetch(database_url, "SELECT type, data FROM events WHERE job_id = $1 ORDER BY id", int(job_id))
    return [(r["type"], r["data"]) for r in rows]


async def test_lifecycle_writes_one_event_per_change(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "kind": "email", "max_attempts": 3})).body
    lease = {"worker_id": "w", "wait_ms": 5000}
    first = (await api.signed(key, "POST", "/v1/workers/lease", lease)).body["jobs"][0]
    await api.signed(
        key,
        "POST",
        f"/v1/jobs/{job['id']}/fail",
        {"lease_token": first["lease_token"], "error": "x", "retry_in_ms": 50},
    )
    second = (await api.signed(key, "POST", "/v1/workers/lease", lease)).body["jobs"][0]
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": second["lease_token"]})
    assert r.body["state"] == "succeeded" and r.body["attempts"] == 2

    events = await _events(database_url, job["id"])
    assert [t for t, _ in events] == [
        "job.created",
        "job.started",
        "job.retry_scheduled",
        "job.started",
        "job.succeeded",
    ]
    assert events[1][1]["lease_token"] == first["lease_token"] and events[1][1]["attempt"] == 1
    assert events[2][1]["error"] == "x" and "run_at" in events[2][1]
    assert events[3][1]["lease_token"] == second["lease_token"] and events[3][1]["attempt"] == 2
    rows = await fetch(database_url, "SELECT DISTINCT tenant_id, queue FROM events WHERE job_id = $1", int(job["id"]))
    assert [(r["tenant_id"], r["queue"]) for r in rows] == [("tenant-a", "default")]


async def test_expired_lease_event_and_dead_after_last_attempt(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 1})).body
    await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "lease_seconds": 1})
    await fetch(database_url, "UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
    assert (await api.admin("POST", "/v1/admin/reap")).body == {"requeued": 1}
    r = await api.signed(key, "GET", f"/v1/jobs/{job['id']}")
    assert (r.body["state"], r.body["last_error"]) == ("dead", "lease expired")
    assert [t for t, _ in await _events(database_url, job["id"])] == ["job.created", "job.started", "job.dead"]


async def test_a_failed_batch_leaves_no_jobs_and_no_events(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    # JSON allows \u0000 in strings but PostgreSQL's jsonb does not: the second job fails in the
    # database after the first was inserted, and the whole batch rolls back.
    body = b'{"jobs": [{"payload": {"ok": 1}}, {"payload": {"bad": "\\u0000"}}]}'
    r = await api.signed(key, "POST", "/v1/jobs/batch", body=body)
    assert r.status == 422, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert await fetch(database_url, "SELECT 1 FROM jobs") == []
    assert await fetch(database_url, "SELECT 1 FROM events") == []


async def test_batch_submit_keeps_order_and_honours_idempotency_keys(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    first = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"v": 0}, "idempotency_key": "k0"})).body
    batch = {
        "jobs": [
            {"payload": {"v": 1}},
            {"payload": {"v": 0}, "idempotency_key": "k0"},
            {"payload": {"v": 3}, "idempotency_key": "k3"},
            {"payload": {"v": 4}},
            {"payload": {"v": 3}, "idempotency_key": "k3"},
        ]
    }
    r = await api.signed(key, "POST", "/v1/jobs/batch", batch)
    assert r.status == 201
    jobs = r.body["jobs"]
    assert [j["payload"]["v"] for j in jobs] == [1, 0, 3, 4, 3]
    assert jobs[1]["id"] == first["id"] and jobs[2]["id"] == jobs[4]["id"]
    assert len(await fetch(database_url, "SELECT 1 FROM jobs")) == 4
    assert len(await fetch(database_url, "SELECT 1 FROM events WHERE type = 'job.created'")) == 4
    again = await api.signed(key, "POST", "/v1/jobs", {"payload": {"v": 3}, "idempotency_key": "k3"})
    assert again.status == 200 and again.body["id"] == jobs[2]["id"]
    # The same key with another request is refused, and the whole batch with it.
    other = await api.signed(key, "POST", "/v1/jobs", {"payload": {"v": 9}, "idempotency_key": "k3"})
    assert other.status == 409 and other.body["field"] == "idempotency_key"
    mixed = {"jobs": [{"payload": {"v": 7}}, {"payload": {"v": 8}, "idempotency_key": "k0"}]}
    refused = await api.signed(key, "POST", "/v1/jobs/batch", mixed)
    assert refused.status == 409 and refused.body["field"] == "jobs[1].idempotency_key"
    assert len(await fetch(database_url, "SELECT 1 FROM jobs")) == 4


async def test_list_pages_newest_first(api: Api) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(
        key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"n": n}, "queue": "q" + str(n % 2)} for n in range(7)]}
    )
    seen: list[int] = []
    after = None
    while True:
        path = "/v1/jobs?limit=3" + (f"&after={after}" if after else "")
        page = (await api.signed(key, "GET", path)).body
        seen += [j["payload"]["n"] for j in page["jobs"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1, 0]
    q1 = (await api.signed(key, "GET", "/v1/jobs?queue=q1&state=ready")).body["jobs"]
    assert [j["payload"]["n"] for j in q1] == [5, 3, 1]
