"""The job state machine as the server runs it: the database's. Every legal transition is driven
through the HTTP API and checked for the state it leaves and exactly the event it writes (read
back from GET /v1/events); illegal ones are refused with 409, change nothing and write no event;
and the table's CHECK constraints refuse rows that no transition may leave behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

import db
from core import Settings

from .support import Api, eventually, fetch, fetchval

pytestmark = pytest.mark.timeout(60)

# A retry this far off stays `scheduled` for the length of any test.
HOUR_MS = 3_600_000
WEEK_MS = 7 * 86_400_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Leases expire into a new state only when a test runs the reaper (POST /v1/admin/reap).
    return msgspec.structs.replace(settings, reap_interval_seconds=3600.0)


class Journal:
    """A tenant's events, read on from the last cursor through GET /v1/events. The count comes
    from the database, so "no new event" means none was written, not merely none served yet."""

    def __init__(self, api: Api, key: str, database_url: str, tenant: str) -> None:
        self.api, self.key, self.database_url, self.tenant = api, key, database_url, tenant
        self.after: str | None = None
        self.read = 0

    async def new(self) -> list[tuple[str, str]]:
        """(type, job id) of each event written since the last call, in the order served."""
        written = int(
            await fetchval(self.database_url, "SELECT count(*) FROM events WHERE tenant_id = $1", self.tenant)
        )
        got: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while len(got) < written - self.read:
            assert time.monotonic() < deadline, f"only {len(got)} of {written - self.read} events were served"
            query = "limit=1000&wait_ms=2000" + (f"&after={self.after}" if self.after else "")
            r = await self.api.signed(self.key, "GET", f"/v1/events?{query}")
            assert r.status == 200, r.body
            got += [(e["type"], e["job_id"]) for e in r.body["events"]]
            self.after = r.body["next"]
        self.read += len(got)
        return got


@pytest.fixture
async def tenant(api: Api, database_url: str) -> tuple[str, Journal]:
    key = await api.tenant("tenant-a")
    return key, Journal(api, key, database_url, "tenant-a")


async def submit(api: Api, key: str, **fields: Any) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/jobs", {"payload": {}, **fields})
    assert r.status == 201, r.body
    job: dict[str, Any] = r.body
    return job


async def lease(api: Api, key: str, job_id: str, **fields: Any) -> int:
    """Lease the tenant's one ready job, which must be `job_id`; returns its lease token."""
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 5000, **fields})
    assert r.status == 200, r.body
    (job,) = r.body["jobs"]
    assert (job["id"], job["state"]) == (job_id, "running")
    token: int = job["lease_token"]
    return token


async def state(api: Api, key: str, job_id: str) -> str:
    r = await api.signed(key, "GET", f"/v1/jobs/{job_id}")
    assert r.status == 200, r.body
    s: str = r.body["state"]
    return s


async def call(api: Api, key: str, job_id: str, action: str, body: Any = None) -> Any:
    """POST /v1/jobs/{id}/{action}, which must answer 200; returns the body."""
    r = await api.signed(key, "POST", f"/v1/jobs/{job_id}/{action}", body)
    assert r.status == 200, (action, r.body)
    return r.body


async def reap(api: Api, n: int) -> None:
    """Run the reaper until it has recovered `n` leases, as they expire by the database clock."""
    total = 0

    async def recovered() -> bool:
        nonlocal total
        r = await api.admin("POST", "/v1/admin/reap")
        assert r.status == 200, r.body
        total += int(r.body["requeued"])
        return total >= n

    await eventually(recovered, timeout=10, every=0.1)
    assert total == n


async def row(database_url: str, job_id: str) -> dict[str, Any]:
    (r,) = await fetch(database_url, "SELECT * FROM jobs WHERE id = $1", int(job_id))
    return dict(r)


# --- legal transitions ---------------------------------------------------------------------


async def test_submit_lease_heartbeat_complete(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    job = await submit(api, key)
    jid = job["id"]
    assert job["state"] == "ready"
    assert await journal.new() == [("job.created", jid)]

    token = await lease(api, key, jid)
    assert await journal.new() == [("job.started", jid)]

    beat = await call(api, key, jid, "heartbeat", {"lease_token": token, "extend_seconds": 60})
    assert beat["cancel_requested"] is False
    assert await state(api, key, jid) == "running"
    assert await journal.new() == []

    done = await call(api, key, jid, "complete", {"lease_token": token, "result": {"ok": 1}})
    assert (done["state"], done["result"]) == ("succeeded", {"ok": 1})
    assert await journal.new() == [("job.succeeded", jid)]
    # The same completion again answers the same and writes nothing.
    again = await call(api, key, jid, "complete", {"lease_token": token, "result": {"ok": 1}})
    assert again["state"] == "succeeded"
    assert await journal.new() == []


async def test_delayed_submit_is_scheduled_then_promoted_without_an_event(
    api: Api, tenant: tuple[str, Journal]
) -> None:
    key, journal = tenant
    later = await submit(api, key, delay_ms=WEEK_MS)
    soon = await submit(api, key, delay_ms=300)
    assert (later["state"], soon["state"]) == ("scheduled", "scheduled")
    assert await journal.new() == [("job.created", later["id"]), ("job.created", soon["id"])]

    async def promoted() -> bool:
        return await state(api, key, soon["id"]) == "ready"

    await eventually(promoted, timeout=10)
    assert await state(api, key, later["id"]) == "scheduled"
    assert await journal.new() == []
    await lease(api, key, soon["id"])
    assert await journal.new() == [("job.started", soon["id"])]


async def test_failures_retry_until_the_attempts_are_used_up(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    jid = (await submit(api, key, max_attempts=3))["id"]
    await journal.new()

    token = await lease(api, key, jid)
    failed = await call(api, key, jid, "fail", {"lease_token": token, "error": "e1", "retry_in_ms": 0})
    assert (failed["state"], failed["attempts"]) == ("scheduled", 1)
    assert await journal.new() == [("job.started", jid), ("job.retry_scheduled", jid)]

    # Due at once: the promotion to ready writes nothing, and the next lease starts attempt 2.
    token = await lease(api, key, jid)
    assert await journal.new() == [("job.started", jid)]
    # A snooze re-schedules and gives the attempt back.
    snoozed = await call(
        api, key, jid, "fail", {"lease_token": token, "error": "later", "retry_in_ms": 0, "snooze": True}
    )
    assert (snoozed["state"], snoozed["attempts"]) == ("scheduled", 1)
    assert await journal.new() == [("job.retry_scheduled", jid)]

    token = await lease(api, key, jid)
    failed = await call(api, key, jid, "fail", {"lease_token": token, "error": "e2", "retry_in_ms": HOUR_MS})
    assert (failed["state"], failed["attempts"]) == ("scheduled", 2)
    assert await journal.new() == [("job.started", jid), ("job.retry_scheduled", jid)]
    assert await state(api, key, jid) == "scheduled"

    # The last attempt fails: dead, however retryable.
    jid2 = (await submit(api, key, max_attempts=1))["id"]
    token = await lease(api, key, jid2)
    dead = await call(api, key, jid2, "fail", {"lease_token": token, "error": "boom"})
    assert (dead["state"], dead["last_error"], dead["finished_at"] is not None) == ("dead", "boom", True)
    assert await journal.new() == [("job.created", jid2), ("job.started", jid2), ("job.dead", jid2)]


async def test_a_failure_that_is_not_retryable_is_dead_at_once(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    jid = (await submit(api, key, max_attempts=5))["id"]
    token = await lease(api, key, jid)
    dead = await call(api, key, jid, "fail", {"lease_token": token, "error": "bad input", "retryable": False})
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert await journal.new() == [("job.created", jid), ("job.started", jid), ("job.dead", jid)]


async def test_cancel_scheduled_and_ready_jobs(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    scheduled = (await submit(api, key, delay_ms=WEEK_MS))["id"]
    ready = (await submit(api, key))["id"]
    await journal.new()
    for jid in (scheduled, ready):
        cancelled = await call(api, key, jid, "cancel")
        assert (cancelled["state"], cancelled["finished_at"] is not None) == ("cancelled", True)
        assert await journal.new() == [("job.cancelled", jid)]


async def test_cancel_a_running_job_ends_it_at_its_next_report(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    # Cancelled while running, then failed: cancelled, never retried.
    jid = (await submit(api, key, max_attempts=5))["id"]
    token = await lease(api, key, jid)
    await journal.new()
    marked = await call(api, key, jid, "cancel")
    assert (marked["state"], marked["cancel_requested"]) == ("running", True)
    assert await journal.new() == []
    assert (await call(api, key, jid, "cancel"))["state"] == "running"  # asking twice marks it once
    assert (await call(api, key, jid, "heartbeat", {"lease_token": token}))["cancel_requested"] is True
    assert await journal.new() == []
    ended = await call(api, key, jid, "fail", {"lease_token": token, "error": "stopping"})
    assert ended["state"] == "cancelled"
    assert await journal.new() == [("job.cancelled", jid)]

    # Cancelled while running, then completed anyway: succeeded.
    jid = (await submit(api, key))["id"]
    token = await lease(api, key, jid)
    await call(api, key, jid, "cancel")
    assert (await call(api, key, jid, "complete", {"lease_token": token}))["state"] == "succeeded"
    assert await journal.new() == [("job.created", jid), ("job.started", jid), ("job.succeeded", jid)]


async def test_expired_leases_are_reaped_into_a_retry_dead_or_cancelled(
    api: Api, tenant: tuple[str, Journal], database_url: str
) -> None:
    key, journal = tenant
    retried = (await submit(api, key, max_attempts=2, retry_base_ms=WEEK_MS, retry_cap_ms=WEEK_MS))["id"]
    used_up = (await submit(api, key, max_attempts=1))["id"]
    cancelled = (await submit(api, key, max_attempts=5))["id"]
    r = await api.signed(
        key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "max_jobs": 3, "lease_seconds": 1}
    )
    leased = {j["id"]: j["lease_token"] for j in r.body["jobs"]}
    assert set(leased) == {retried, used_up, cancelled}
    await call(api, key, cancelled, "cancel")
    assert sorted(await journal.new()) == sorted(
        [(t, j) for j in (retried, used_up, cancelled) for t in ("job.created", "job.started")]
    )

    await reap(api, 3)
    assert sorted(await journal.new()) == sorted(
        [("job.retry_scheduled", retried), ("job.dead", used_up), ("job.cancelled", cancelled)]
    )
    for jid, expected in ((retried, "scheduled"), (used_up, "dead"), (cancelled, "cancelled")):
        after = await row(database_url, jid)
        assert (after["state"], after["last_error"], after["lease_token"]) == (expected, "lease expired", None)
        # The expired worker is fenced out.
        r = await api.signed(key, "POST", f"/v1/jobs/{jid}/complete", {"lease_token": leased[jid]})
        assert r.status == 409, r.body
        assert await row(database_url, jid) == after
    assert await journal.new() == []


async def test_dead_and_cancelled_jobs_are_replayed(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    dead = (await submit(api, key, max_attempts=1))["id"]
    token = await lease(api, key, dead)
    await call(api, key, dead, "fail", {"lease_token": token, "error": "boom"})
    cancelled = (await submit(api, key, delay_ms=WEEK_MS))["id"]
    await call(api, key, cancelled, "cancel")
    await journal.new()

    for jid in (dead, cancelled):
        replayed = await call(api, key, jid, "retry")
        assert (replayed["state"], replayed["attempts"], replayed["finished_at"]) == ("ready", 0, None)
        assert await journal.new() == [("job.replayed", jid)]
    # A replayed job runs again.
    token = await lease(api, key, dead)
    await call(api, key, dead, "complete", {"lease_token": token})
    assert await journal.new() == [("job.started", dead), ("job.succeeded", dead)]


async def test_the_operator_replays_dead_and_cancelled_jobs(api: Api, tenant: tuple[str, Journal]) -> None:
    key, journal = tenant
    dead = []
    for _ in range(2):
        jid = (await submit(api, key, max_attempts=1))["id"]
        token = await lease(api, key, jid)
        await call(api, key, jid, "fail", {"lease_token": token, "error": "boom", "retryable": False})
        dead.append(jid)
    cancelled = (await submit(api, key, delay_ms=WEEK_MS))["id"]
    await call(api, key, cancelled, "cancel")
    await journal.new()

    # The dead-letter queue, whole: the cancelled job is not in it.
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a"})
    assert r.body == {"replayed": 2}
    assert await journal.new() == [("job.replayed", jid) for jid in dead]
    # Named jobs: the cancelled one moves, the now ready ones do not.
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "ids": [cancelled, *dead]})
    assert r.body == {"replayed": 1}
    assert await journal.new() == [("job.replayed", cancelled)]
    assert [await state(api, key, jid) for jid in (*dead, cancelled)] == ["ready"] * 3


# --- illegal transitions -------------------------------------------------------------------


async def refused(api: Api, key: str, jid: str, action: str, body: Any = None) -> None:
    r = await api.signed(key, "POST", f"/v1/jobs/{jid}/{action}", body)
    assert r.status == 409, (action, r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/problem+json")


async def test_illegal_transitions_are_refused_and_write_nothing(
    api: Api, tenant: tuple[str, Journal], database_url: str
) -> None:
    key, journal = tenant
    # A succeeded job with an earlier, stale lease token.
    succeeded = (await submit(api, key, max_attempts=3))["id"]
    stale = await lease(api, key, succeeded)
    await call(api, key, succeeded, "fail", {"lease_token": stale, "error": "once", "retry_in_ms": 0})
    current = await lease(api, key, succeeded)
    await call(api, key, succeeded, "complete", {"lease_token": current})
    # A dead job, a cancelled one, a running one, a ready one and a scheduled one.
    dead = (await submit(api, key, max_attempts=1))["id"]
    dead_token = await lease(api, key, dead)
    await call(api, key, dead, "fail", {"lease_token": dead_token, "error": "boom"})
    cancelled = (await submit(api, key))["id"]
    await call(api, key, cancelled, "cancel")
    running = (await submit(api, key))["id"]
    running_token = await lease(api, key, running)
    ready = (await submit(api, key))["id"]
    scheduled = (await submit(api, key, delay_ms=WEEK_MS))["id"]
    await journal.new()
    jobs = (succeeded, dead, cancelled, running, ready, scheduled)
    before = {jid: await row(database_url, jid) for jid in jobs}

    await refused(api, key, succeeded, "complete", {"lease_token": stale})
    await refused(api, key, succeeded, "fail", {"lease_token": stale, "error": "late"})
    await refused(api, key, succeeded, "heartbeat", {"lease_token": stale})
    await refused(api, key, succeeded, "fail", {"lease_token": current, "error": "after success"})
    await refused(api, key, succeeded, "heartbeat", {"lease_token": current})
    await refused(api, key, dead, "complete", {"lease_token": dead_token})
    await refused(api, key, dead, "heartbeat", {"lease_token": dead_token})
    await refused(api, key, running, "complete", {"lease_token": running_token + 1})
    await refused(api, key, running, "fail", {"lease_token": stale, "error": "not mine"})
    await refused(api, key, ready, "complete", {"lease_token": running_token})
    await refused(api, key, scheduled, "fail", {"lease_token": running_token, "error": "never leased"})
    for jid in (succeeded, dead, cancelled):
        await refused(api, key, jid, "cancel")
    for jid in (succeeded, running, ready, scheduled):
        await refused(api, key, jid, "retry")
    r = await api.admin("POST", "/v1/admin/replay", {"tenant_id": "tenant-a", "ids": [succeeded, running, ready]})
    assert r.body == {"replayed": 0}

    assert {jid: await row(database_url, jid) for jid in jobs} == before
    assert await journal.new() == []


# --- the table's own constraints -----------------------------------------------------------


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def _violates(conn: asyncpg.Connection, constraint: str, sql: str, *args: object) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(sql, *args)
    assert caught.value.constraint_name == constraint


async def test_the_database_refuses_rows_no_transition_may_leave(
    api: Api, tenant: tuple[str, Journal], database_url: str, conn: asyncpg.Connection
) -> None:
    key, journal = tenant
    first = (await submit(api, key))["id"]
    token = await lease(api, key, first)
    await call(api, key, first, "complete", {"lease_token": token})
    second = (await submit(api, key, max_attempts=2))["id"]
    await lease(api, key, second)
    await journal.new()
    succeeded, running = int(first), int(second)
    before = {jid: await row(database_url, str(jid)) for jid in (succeeded, running)}

    update = "UPDATE jobs SET {} WHERE id = $1"
    cases = [
        ("jobs_finished_iff_terminal", "finished_at = NULL", succeeded),
        ("jobs_finished_iff_terminal", "finished_at = now()", running),
        ("jobs_finished_iff_terminal", "state = 'dead', lease_expires_at = NULL", running),
        ("jobs_lease_iff_running", "lease_expires_at = NULL", running),
        ("jobs_lease_iff_running", "lease_expires_at = now()", succeeded),
        ("jobs_running_has_token", "lease_token = NULL", running),
        ("jobs_started_when_run", "started_at = NULL", succeeded),
        ("jobs_started_when_run", "started_at = NULL", running),
        ("jobs_attempts_range", "attempts = max_attempts + 1", running),
        ("jobs_attempts_range", "attempts = -1", succeeded),
    ]
    for constraint, assignment, jid in cases:
        await _violates(conn, constraint, update.format(assignment), jid)
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await conn.execute("UPDATE jobs SET state = 'paused' WHERE id = $1", running)
    await _violates(
        conn,
        "events_type_check",
        "INSERT INTO events (tenant_id, job_id, queue, type) VALUES ('tenant-a', $1, 'default', 'job.exploded')",
        running,
    )

    assert {jid: await row(database_url, str(jid)) for jid in (succeeded, running)} == before
    assert await journal.new() == []
