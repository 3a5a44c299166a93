"""Lease tokens fence out every worker but the current holder; completion is idempotent."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

from core import Settings

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, fetch, fetchval, running

pytestmark = pytest.mark.timeout(60)


async def _lease(api: Api, key: str, **fields: object) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, **fields})
    assert r.status == 200, r.body
    (job,) = r.body["jobs"]
    return dict(job)


async def _job_row(database_url: str, job_id: object) -> dict[str, object]:
    (row,) = await fetch(database_url, "SELECT * FROM jobs WHERE id = $1", int(str(job_id)))
    return dict(row)


async def test_stale_token_gets_409_and_changes_nothing(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 3})).body
    first = await _lease(api, key, lease_seconds=1)
    # The first lease expires and the reaper hands the job back; a second worker leases it.
    await fetchval(
        database_url, "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1", int(job["id"])
    )
    assert (await api.admin("POST", "/v1/admin/reap")).body == {"requeued": 1}
    second = await _lease_when_ready(api, key)
    assert second["id"] == first["id"] and second["lease_token"] != first["lease_token"]
    before = await _job_row(database_url, job["id"])
    events_before = await fetchval(database_url, "SELECT count(*) FROM events")

    stale = first["lease_token"]
    for path, body in (
        ("complete", {"lease_token": stale, "result": {"late": True}}),
        ("heartbeat", {"lease_token": stale}),
        ("fail", {"lease_token": stale, "error": "late"}),
    ):
        r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/{path}", body)
        assert r.status == 409, (path, r.body)
        assert r.headers["Content-Type"].startswith("application/problem+json")
    ack = await api.signed(key, "POST", "/v1/workers/ack", {"complete": [{"id": job["id"], "lease_token": stale}]})
    assert ack.body["results"] == [{"id": job["id"], "status": 409, "state": "running"}]

    assert await _job_row(database_url, job["id"]) == before
    assert await fetchval(database_url, "SELECT count(*) FROM events") == events_before
    # The current holder is unaffected.
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": second["lease_token"], "result": 7}
    )
    assert (r.status, r.body["state"], r.body["result"]) == (200, "succeeded", 7)


async def test_repeated_completion_answers_the_same_and_writes_no_second_event(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
    job = await _lease(api, key)
    body = {"lease_token": job["lease_token"], "result": {"answer": 42}}
    first = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", body)
    second = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", body)
    assert first.status == second.status == 200
    assert first.body == second.body
    types = [
        r["type"]
        for r in await fetch(database_url, "SELECT type FROM events WHERE job_id = $1 ORDER BY id", int(job["id"]))
    ]
    assert types == ["job.created", "job.started", "job.succeeded"]
    # A fail with the same token after success is a conflict, not a second outcome.
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": job["lease_token"], "error": "x"})
    assert r.status == 409
    assert await fetchval(database_url, "SELECT state::text FROM jobs WHERE id = $1", int(job["id"])) == "succeeded"


async def test_repeated_fail_is_idempotent(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 3})
    job = await _lease(api, key)
    body = {"lease_token": job["lease_token"], "error": "boom", "retry_in_ms": 60_000}
    first = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", body)
    second = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", body)
    assert first.status == second.status == 200
    assert first.body == second.body and first.body["state"] == "scheduled"
    types = [
        r["type"]
        for r in await fetch(database_url, "SELECT type FROM events WHERE job_id = $1 ORDER BY id", int(job["id"]))
    ]
    assert types == ["job.created", "job.started", "job.retry_scheduled"]


async def _beat(api: Api, database_url: str, key: str, job: dict[str, Any], **fields: object) -> tuple[float, float]:
    """Heartbeat `job`; returns how far past the database clock the new expiry lies, as a range
    (the clock read just before and just after the request)."""
    before = await fetchval(database_url, "SELECT now()")
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/heartbeat", {"lease_token": job["lease_token"], **fields})
    after = await fetchval(database_url, "SELECT now()")
    assert r.status == 200, r.body
    assert r.body["cancel_requested"] is False
    expires = datetime.fromisoformat(r.body["lease_expires_at"])
    assert expires == (await _job_row(database_url, job["id"]))["lease_expires_at"]
    return (expires - after).total_seconds(), (expires - before).total_seconds()


def _within(extension: tuple[float, float], seconds: float) -> bool:
    low, high = extension
    return low <= seconds <= high


async def test_heartbeat_extends_the_lease_by_what_it_asks_30_s_by_default(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
    job = await _lease(api, key, lease_seconds=5)
    # the documented default extension is 30 s
    extension = await _beat(api, database_url, key, job)
    assert _within(extension, 30), extension
    extension = await _beat(api, database_url, key, job, extend_seconds=600)
    assert _within(extension, 600), extension
    extension = await _beat(api, database_url, key, job, extend_seconds=3600)
    assert _within(extension, 3600), extension
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/heartbeat", {"lease_token": job["lease_token"], "extend_seconds": 3601}
    )
    assert (r.status, r.body["field"]) == (422, "extend_seconds"), r.body


async def test_heartbeat_and_lease_stop_at_the_deployments_max_lease_seconds(
    settings: Settings, database_url: str
) -> None:
    capped = msgspec.structs.replace(settings, max_lease_seconds=120)
    async with running(InProcessGateway(capped)) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await api.tenant("tenant-a")
            await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
            before = await fetchval(database_url, "SELECT now()")
            job = await _lease(api, key, lease_seconds=600)
            after = await fetchval(database_url, "SELECT now()")
            expires = (await _job_row(database_url, job["id"]))["lease_expires_at"]
            assert isinstance(expires, datetime)
            assert before + timedelta(seconds=120) <= expires <= after + timedelta(seconds=120), (before, expires)
            extension = await _beat(api, database_url, key, job, extend_seconds=600)
            assert _within(extension, 120), extension
            extension = await _beat(api, database_url, key, job, extend_seconds=60)
            assert _within(extension, 60), extension
        finally:
            await api.close()


async def test_heartbeat_never_extends_past_the_jobs_timeout(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "timeout_seconds": 45})
    job = await _lease(api, key, lease_seconds=5)
    # within the limit, the heartbeat extends as asked
    extension = await _beat(api, database_url, key, job, extend_seconds=10)
    assert _within(extension, 10), extension
    await _beat(api, database_url, key, job, extend_seconds=600)
    row = await _job_row(database_url, job["id"])
    started_at, expires = row["started_at"], row["lease_expires_at"]
    assert isinstance(started_at, datetime) and isinstance(expires, datetime)
    assert expires == started_at + timedelta(seconds=45)


async def test_fail_paths_retry_then_dead(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 2})
    job = await _lease(api, key)
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": job["lease_token"], "error": "e1", "retry_in_ms": 0}
    )
    assert (r.body["state"], r.body["attempts"], r.body["last_error"]) == ("scheduled", 1, "e1")
    job = await _lease_when_ready(api, key)
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": job["lease_token"], "error": "e2"})
    assert (r.body["state"], r.body["attempts"], r.body["last_error"]) == ("dead", 2, "e2")
    assert r.body["finished_at"] is not None

    # A non-retryable failure is dead at once, whatever attempts remain.
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 5})
    job = await _lease(api, key)
    body = {"lease_token": job["lease_token"], "error": "bad input", "retryable": False}
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", body)
    assert (r.body["state"], r.body["attempts"]) == ("dead", 1)
    dead = await fetchval(database_url, "SELECT count(*) FROM events WHERE type = 'job.dead'")
    assert dead == 2


async def _lease_when_ready(api: Api, key: str) -> dict[str, Any]:
    """A retry due now is promoted by the gateway's timer; the long-poll wakes for it."""
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 5000})
    assert r.status == 200 and r.body["jobs"], r.body
    return dict(r.body["jobs"][0])
