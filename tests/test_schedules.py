"""Cron schedules over real HTTP and PostgreSQL: CRUD, validation, isolation, pause and resume,
exactly-once firing across gateway processes, and catch-up without a burst."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.services import scheduler

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, InProcessGateway, eventually, fetch, fetchval

pytestmark = pytest.mark.timeout(90)

EVERY_SECOND = "* * * * * *"


def gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def fires_of(database_url: str, tenant: str, name: str) -> list[Any]:
    return await fetch(
        database_url,
        "SELECT f.fire_at, f.job_id FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id"
        " WHERE s.tenant_id = $1 AND s.name = $2 ORDER BY f.fire_at",
        tenant,
        name,
    )


async def count_fires(database_url: str, tenant: str, name: str) -> int:
    return len(await fires_of(database_url, tenant, name))


async def test_create_get_list_patch_delete(api: Api) -> None:
    key = await api.tenant("tenant-a")
    body = {
        "name": "nightly-report",
        "cron": "0 9 * * MON-FRI",
        "timezone": "America/New_York",
        "queue": "reports",
        "kind": "report.build",
        "payload": {"format": "pdf"},
        "priority": 5,
        "max_attempts": 3,
    }
    r = await api.signed(key, "POST", "/v1/schedules", body)
    assert r.status == 201, r.body
    created = r.body
    assert {k: created[k] for k in body} == body
    assert created["tenant_id"] == "tenant-a"
    assert created["paused"] is False
    assert created["last_fired_at"] is None
    next_local = ts(created["next_fire_at"]).astimezone(ZoneInfo("America/New_York"))
    assert (next_local.hour, next_local.minute, next_local.weekday() < 5) == (9, 0, True)
    assert ts(created["next_fire_at"]) > datetime.now(UTC) - timedelta(seconds=5)

    r = await api.signed(key, "POST", "/v1/schedules", {**body, "cron": "* * * * *"})
    assert r.status == 409, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")

    r = await api.signed(key, "POST", "/v1/schedules", {"name": "minimal", "cron": "@hourly", "paused": True})
    assert r.status == 201, r.body
    minimal = r.body
    assert (minimal["queue"], minimal["kind"], minimal["payload"], minimal["priority"]) == ("default", "", {}, 0)
    assert (minimal["timezone"], minimal["max_attempts"], minimal["paused"]) == ("UTC", None, True)

    r = await api.signed(key, "GET", "/v1/schedules/nightly-report")
    assert (r.status, r.body) == (200, created)
    r = await api.signed(key, "GET", "/v1/schedules")
    assert r.status == 200
    assert [s["name"] for s in r.body["schedules"]] == ["minimal", "nightly-report"]

    r = await api.signed(key, "PATCH", "/v1/schedules/nightly-report", {"cron": "30 7 * * *", "timezone": "UTC"})
    assert r.status == 200, r.body
    assert (r.body["cron"], r.body["timezone"], r.body["queue"]) == ("30 7 * * *", "UTC", "reports")
    nxt = ts(r.body["next_fire_at"])
    assert (nxt.hour, nxt.minute) == (7, 30)
    r = await api.signed(key, "PATCH", "/v1/schedules/nightly-report", {"max_attempts": None, "payload": {"a": 1}})
    assert (r.status, r.body["max_attempts"], r.body["payload"], r.body["priority"]) == (200, None, {"a": 1}, 5)

    r = await api.signed(key, "PATCH", "/v1/schedules/nightly-report", {"name": "minimal"})
    assert r.status == 409, r.body
    r = await api.signed(key, "PATCH", "/v1/schedules/nightly-report", {"name": "morning-report"})
    assert (r.status, r.body["name"]) == (200, "morning-report")
    assert (await api.signed(key, "GET", "/v1/schedules/nightly-report")).status == 404

    r = await api.signed(key, "DELETE", "/v1/schedules/morning-report")
    assert (r.status, r.raw) == (204, b"")
    assert (await api.signed(key, "GET", "/v1/schedules/morning-report")).status == 404
    assert (await api.signed(key, "DELETE", "/v1/schedules/morning-report")).status == 404
    assert (await api.signed(key, "PATCH", "/v1/schedules/morning-report", {"paused": True})).status == 404
    r = await api.signed(key, "GET", "/v1/schedules")
    assert [s["name"] for s in r.body["schedules"]] == ["minimal"]


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        ({"name": "s", "cron": "61 * * * *"}, "cron", "minute: 61 is out of range 0-59"),
        ({"name": "s", "cron": "* * *"}, "cron", "expected 5 fields"),
        ({"name": "s", "cron": "0 0 * * FUNDAY"}, "cron", "unknown name 'FUNDAY'"),
        ({"name": "s", "cron": "0 0 30 2 *"}, "cron", "never fires"),
        ({"name": "s", "cron": ""}, "cron", "cron"),
        ({"name": "s", "cron": "* * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone", "unknown time zone"),
        ({"name": "s", "cron": "* * * * *", "timezone": "+02:00"}, "timezone", "unknown time zone"),
        ({"name": "bad name", "cron": "* * * * *"}, "name", "name"),
        ({"cron": "* * * * *"}, "name", "name"),
        ({"name": "s"}, "cron", "cron"),
        ({"name": "s", "cron": "* * * * *", "queue": ""}, "queue", "queue"),
        ({"name": "s", "cron": "* * * * *", "priority": 5000}, "priority", "priority"),
        ({"name": "s", "cron": "* * * * *", "max_attempts": 0}, "max_attempts", "max_attempts"),
        ({"name": "s", "cron": "* * * * *", "payload": [1]}, "payload", "payload"),
        ({"name": "s", "cron": "* * * * *", "surprise": 1}, "surprise", "surprise"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    api: Api, database_url: str, body: dict[str, Any], field: str, detail: str
) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "POST", "/v1/schedules", body)
    assert r.status == 422, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.body["field"] == field, r.body
    assert detail in r.body["detail"], r.body
    assert await fetchval(database_url, "SELECT count(*) FROM schedules") == 0


async def test_invalid_patch_is_422_and_changes_nothing(api: Api) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "POST", "/v1/schedules", {"name": "s", "cron": "0 * * * *"})
    assert r.status == 201
    before = r.body
    for patch, field in (
        ({"cron": "0 25 * * *"}, "cron"),
        ({"timezone": "Nowhere/Else"}, "timezone"),
        ({"name": "no spaces"}, "name"),
        ({"paused": "yes"}, "paused"),
    ):
        r = await api.signed(key, "PATCH", "/v1/schedules/s", patch)
        assert (r.status, r.body["field"]) == (422, field), r.body
    r = await api.signed(key, "PATCH", "/v1/schedules/s", {"cron": "0 25 * * *"})
    assert r.body["detail"] == "cron: invalid expression '0 25 * * *': hour: 25 is out of range 0-23"
    assert (await api.signed(key, "GET", "/v1/schedules/s")).body == before


async def test_a_tenant_cannot_see_or_touch_another_tenants_schedules(api: Api, database_url: str) -> None:
    key_a = await api.tenant("tenant-a")
    key_b = await api.tenant("tenant-b")
    r = await api.signed(key_a, "POST", "/v1/schedules", {"name": "mine", "cron": "0 0 1 1 *"})
    assert r.status == 201
    for method, body in (("GET", None), ("PATCH", {"paused": True}), ("DELETE", None)):
        r = await api.signed(key_b, method, "/v1/schedules/mine", body)
        assert r.status == 404, (method, r.body)
    assert (await api.signed(key_b, "GET", "/v1/schedules")).body == {"schedules": []}
    # The same name is free in another tenant.
    r = await api.signed(key_b, "POST", "/v1/schedules", {"name": "mine", "cron": "0 0 1 1 *"})
    assert r.status == 201
    r = await api.signed(key_a, "GET", "/v1/schedules/mine")
    assert (r.status, r.body["paused"], r.body["tenant_id"]) == (200, False, "tenant-a")
    assert await fetchval(database_url, "SELECT count(*) FROM schedules") == 2


async def test_a_fire_creates_the_job_the_schedule_describes(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    body = {
        "name": "tick",
        "cron": EVERY_SECOND,
        "queue": "ticks",
        "kind": "tick",
        "payload": {"n": 1},
        "priority": 7,
        "max_attempts": 2,
    }
    assert (await api.signed(key, "POST", "/v1/schedules", body)).status == 201
    await eventually(lambda: count_fires(database_url, "tenant-a", "tick"), timeout=10)
    assert (await api.signed(key, "PATCH", "/v1/schedules/tick", {"paused": True})).status == 200
    fires = await fires_of(database_url, "tenant-a", "tick")
    r = await api.signed(key, "GET", f"/v1/jobs/{fires[0]['job_id']}")
    assert r.status == 200, r.body
    job = r.body
    assert (job["queue"], job["kind"], job["payload"], job["priority"], job["max_attempts"]) == (
        "ticks",
        "tick",
        {"n": 1},
        7,
        2,
    )
    # The job's run_at is the due time it was created for.
    assert ts(job["run_at"]) == fires[0]["fire_at"]
    assert job["state"] == "ready"
    events = await fetch(database_url, "SELECT type FROM events WHERE job_id = $1", int(job["id"]))
    assert [e["type"] for e in events] == ["job.created"]
    s = (await api.signed(key, "GET", "/v1/schedules/tick")).body
    assert ts(s["last_fired_at"]) == fires[-1]["fire_at"]
    assert ts(s["next_fire_at"]) > fires[-1]["fire_at"]
    # The scheduler's jobs are counted.
    metrics = (await api.admin("GET", "/metrics")).raw.decode()
    counted = sum(
        float(m.group(1))
        for m in re.finditer(r'^orch_schedule_fires_total\{[^}]*tenant="tenant-a"[^}]*\} (\S+)$', metrics, re.M)
    )
    assert counted == len(fires)


async def start_witness(api: Api) -> None:
    """An every-second schedule of a tenant of its own, to see the firing loop at work."""
    key = await api.tenant("witness")
    assert (await api.signed(key, "POST", "/v1/schedules", {"name": "tick", "cron": EVERY_SECOND})).status == 201


async def two_more_seconds_fired(database_url: str) -> None:
    """Wait until the witness has fired twice more: the firing loop has since handled two due
    seconds, at each of which any other every-second schedule was due as well."""
    start = await count_fires(database_url, "witness", "tick")
    await eventually(lambda: _more(database_url, start + 1, "witness"), timeout=10)


async def test_pause_stops_firing_and_resume_restarts_it(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await start_witness(api)
    r = await api.signed(key, "POST", "/v1/schedules", {"name": "tick", "cron": EVERY_SECOND, "paused": True})
    assert r.status == 201
    await two_more_seconds_fired(database_url)
    assert await count_fires(database_url, "tenant-a", "tick") == 0

    r = await api.signed(key, "PATCH", "/v1/schedules/tick", {"paused": False})
    assert (r.status, r.body["paused"]) == (200, False)
    await eventually(lambda: count_fires(database_url, "tenant-a", "tick"), timeout=10)

    r = await api.signed(key, "PATCH", "/v1/schedules/tick", {"paused": True})
    assert (r.status, r.body["paused"]) == (200, True)
    paused_at = await fetchval(database_url, "SELECT now()")
    stopped = await count_fires(database_url, "tenant-a", "tick")
    await two_more_seconds_fired(database_url)
    assert await count_fires(database_url, "tenant-a", "tick") == stopped

    r = await api.signed(key, "PATCH", "/v1/schedules/tick", {"paused": False})
    assert r.status == 200
    resumed_at = await fetchval(database_url, "SELECT now()")
    await eventually(lambda: _more(database_url, stopped), timeout=10)
    # What was due while paused stays missed: every later fire is after the resume.
    after = [f["fire_at"] for f in await fires_of(database_url, "tenant-a", "tick")][stopped:]
    assert after
    assert all(f > paused_at and f >= resumed_at - timedelta(seconds=1) for f in after), (paused_at, resumed_at, after)


async def _more(database_url: str, than: int, tenant: str = "tenant-a") -> bool:
    return await count_fires(database_url, tenant, "tick") > than


async def test_a_disabled_tenants_schedules_do_not_fire(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    await start_witness(api)
    assert (await api.signed(key, "POST", "/v1/schedules", {"name": "tick", "cron": EVERY_SECOND})).status == 201
    assert (await api.admin("PATCH", "/v1/admin/tenants/tenant-a", {"disabled": True})).status == 200
    before = await count_fires(database_url, "tenant-a", "tick")
    next_fire = "SELECT next_fire_at FROM schedules WHERE tenant_id = 'tenant-a'"
    first_next = await fetchval(database_url, next_fire)
    await two_more_seconds_fired(database_url)
    assert await count_fires(database_url, "tenant-a", "tick") == before
    # ...while the schedule still moves on, rather than staying due and spinning the loop.
    assert await fetchval(database_url, next_fire) > first_next


async def test_catch_up_fires_only_the_most_recent_missed_time(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    for name, cron in (("yearly", "0 0 1 1 *"), ("hourly", "0 * * * *"), ("secondly", "*/1 * * * * *")):
        r = await api.signed(key, "POST", "/v1/schedules", {"name": name, "cron": cron, "paused": True})
        assert r.status == 201
    # As if every gateway had been down for three years.
    await fetch(
        database_url,
        "UPDATE schedules SET next_fire_at = now() - interval '3 years' - interval '17 seconds', paused = false",
    )
    await eventually(
        lambda: fetchval(database_url, "SELECT count(*) = 3 FROM schedules WHERE next_fire_at > now()"), timeout=10
    )
    await api.signed(key, "PATCH", "/v1/schedules/secondly", {"paused": True})
    now = await fetchval(database_url, "SELECT now()")

    yearly = await fires_of(database_url, "tenant-a", "yearly")
    assert [f["fire_at"] for f in yearly] == [datetime(now.year, 1, 1, tzinfo=UTC)]
    hourly = await fires_of(database_url, "tenant-a", "hourly")
    top_of_hour = now.replace(minute=0, second=0, microsecond=0)
    # (Crossing an hour boundary during the test adds that hour's fire, legitimately.)
    assert [f["fire_at"] for f in hourly][:1] in ([top_of_hour], [top_of_hour - timedelta(hours=1)])
    assert len(hourly) <= 2
    secondly = [f["fire_at"] for f in await fires_of(database_url, "tenant-a", "secondly")]
    # One catch-up fire near now, then on time: nothing from the three missed years.
    assert secondly[0] > now - timedelta(seconds=15), secondly[:3]
    assert len(secondly) < 15
    assert gaps(secondly) == [1.0] * (len(secondly) - 1)
    jobs = await fetchval(database_url, "SELECT count(*) FROM jobs")
    assert jobs == len(yearly) + len(hourly) + len(secondly)
    r = await api.signed(key, "GET", "/v1/schedules/yearly")
    assert ts(r.body["last_fired_at"]) == datetime(now.year, 1, 1, tzinfo=UTC)
    assert ts(r.body["next_fire_at"]) == datetime(now.year + 1, 1, 1, tzinfo=UTC)


async def test_the_fire_record_not_the_lock_decides(database_url: str) -> None:
    """A gateway that picks a due time already fired (say, on a stale next_fire_at) creates nothing."""
    import db

    conn = await db.connect(database_url)
    try:
        await db.tenant_insert(conn, "tenant-a", "", 1, None)
        now = await db.schedule_clock(conn)
        due_time = datetime(now.year, 1, 1, tzinfo=UTC)
        values = db.ScheduleValues(
            name="yearly",
            cron="0 0 1 1 *",
            timezone="UTC",
            queue="default",
            kind="k",
            payload={},
            priority=0,
            max_attempts=None,
            paused=False,
            next_fire_at=due_time,
        )
        assert await db.schedule_insert(conn, "tenant-a", values) is not None
        for attempt in range(3):
            async with conn.transaction():
                batch = await db.schedule_fire_due(conn, limit=100, default_max_attempts=5)
            assert batch.due == 1
            assert [f.fire_at for f in batch.fired] == ([due_time] if attempt == 0 else [])
            await conn.execute("UPDATE schedules SET next_fire_at = $1", due_time)
    finally:
        await conn.close()
    assert await fetchval(database_url, "SELECT count(*) FROM jobs") == 1
    assert await fetchval(database_url, "SELECT count(*) FROM schedule_fires WHERE job_id IS NOT NULL") == 1


async def test_old_fire_records_are_pruned(api: Api, gateway: InProcessGateway, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "POST", "/v1/schedules", {"name": "s", "cron": "0 0 1 1 *", "paused": True})
    assert r.status == 201
    keep = scheduler.KEEP_FIRES_SECONDS
    old = scheduler.PRUNE_BATCH + 5  # more than one batch of them
    await fetch(
        database_url,
        "INSERT INTO schedule_fires (schedule_id, fire_at)"
        " SELECT id, now() - make_interval(secs => $1 + 3600 + g) FROM schedules, generate_series(1, $2) g",
        keep,
        old,
    )
    # an hour short of the retention, and younger
    await fetch(
        database_url,
        "INSERT INTO schedule_fires (schedule_id, fire_at)"
        " SELECT id, now() - make_interval(secs => $1 - 3600 - g) FROM schedules, generate_series(1, 5) g"
        " UNION ALL SELECT id, now() - d * interval '1 day' FROM schedules, generate_series(1, 6) d",
        keep,
    )
    assert await scheduler.prune_fires(gateway.runtime) == old
    assert await scheduler.prune_fires(gateway.runtime) == 0
    assert await fetchval(database_url, "SELECT count(*) FROM schedule_fires") == 11
    oldest = await fetchval(database_url, "SELECT extract(epoch FROM now() - min(fire_at)) FROM schedule_fires")
    assert keep - 3600 - 6 < float(oldest) < keep


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_each_due_time_fires_exactly_once_across_three_gateway_processes(database_url: str) -> None:
    gateways = [GatewayProcess(database_url, ADMIN_TOKEN) for _ in range(3)]
    clients: list[Api] = []
    try:
        await asyncio.gather(*(g.wait_ready() for g in gateways))
        clients = [Api(g.url, ADMIN_TOKEN) for g in gateways]
        key = await clients[0].tenant("tenant-a")
        r = await clients[1].signed(key, "POST", "/v1/schedules", {"name": "tick", "cron": EVERY_SECOND})
        assert r.status == 201, r.body
        await eventually(lambda: _more(database_url, 5), timeout=20)
        r = await clients[2].signed(key, "PATCH", "/v1/schedules/tick", {"paused": True})
        assert r.status == 200

        fires = await fires_of(database_url, "tenant-a", "tick")
        times = [f["fire_at"] for f in fires]
        assert len(times) >= 5, times
        assert len(set(times)) == len(times)
        # Consecutive seconds: no second fired twice, none skipped.
        assert gaps(times) == [1.0] * (len(times) - 1)
        job_ids = [f["job_id"] for f in fires]
        assert None not in job_ids and len(set(job_ids)) == len(job_ids)
        jobs = await fetch(database_url, "SELECT id, run_at FROM jobs WHERE tenant_id = 'tenant-a' ORDER BY id")
        assert sorted(job_ids) == [j["id"] for j in jobs]
        assert sorted(j["run_at"] for j in jobs) == times

        # Each process counted what it fired; together, every fire once.
        counted = 0.0
        for c in clients:
            text = (await c.admin("GET", "/metrics")).raw.decode()
            counted += sum(float(v) for v in re.findall(r"^orch_schedule_fires_total\{[^}]*\} (\S+)$", text, re.M))
        assert counted == len(times)
    finally:
        for c in clients:
            await c.close()
        outputs = [g.stop() for g in gateways]
    for out in outputs:
        assert "Traceback" not in out, out
