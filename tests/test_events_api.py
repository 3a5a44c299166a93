"""The event stream as clients see it: cursors that never skip an event whose transaction
committed late, long-polls and Server-Sent Events that wake on commit, durable consumers,
tenant isolation, retention, and the SDK's EventsClient."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import uvicorn

import db
import sdk
from core import Settings, signing
from gateway.services.event_pruner import prune_events

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually, fetch, fetchval, free_port

pytestmark = pytest.mark.timeout(60)

KEEPALIVE_S = 0.3


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        reap_interval_seconds=0.2,
        event_stream_keepalive_seconds=KEEPALIVE_S,
    )


def cursor(text: str) -> db.Cursor:
    c = db.Cursor.parse(text)
    assert c is not None, text
    return c


async def insert_event(conn: asyncpg.Connection, tenant_id: str, job_id: int) -> int:
    """An event written by hand, as a job statement would write it, in the caller's transaction."""
    event_id: int = await conn.fetchval(
        "INSERT INTO events (tenant_id, job_id, queue, type) VALUES ($1, $2, 'default', 'job.created') RETURNING id",
        tenant_id,
        job_id,
    )
    return event_id


async def read(api: Api, key: str, after: str | None = None, **query: Any) -> tuple[list[dict[str, Any]], str]:
    params = {**({"after": after} if after is not None else {}), **query}
    path = "/v1/events" + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
    r = await api.signed(key, "GET", path)
    assert r.status == 200, r.body
    return r.body["events"], r.body["next"]


async def read_until(api: Api, key: str, count: int, after: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Follow `next` with long-polls until `count` events have come."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(events) < count:
        assert time.monotonic() < deadline, f"only {len(events)} of {count} events came"
        page, after = await read(api, key, after, wait_ms=5000, limit=3)
        events += page
    assert after is not None
    return events, after


async def lease(api: Api, key: str, queue: str) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "queues": [queue], "wait_ms": 5000})
    assert r.status == 200 and len(r.body["jobs"]) == 1, r.body
    job: dict[str, Any] = r.body["jobs"][0]
    return job


async def prune(gateway: InProcessGateway, expected: int) -> None:
    """Prune until `expected` events have gone, then check nothing more goes. Events a transaction
    elsewhere on the server still holds back (xid at or above the xmin) wait for it to end."""
    pruned = 0

    async def done() -> bool:
        nonlocal pruned
        pruned += await prune_events(gateway.runtime)
        return pruned >= expected

    await eventually(done, timeout=20)
    assert pruned == expected
    assert await prune_events(gateway.runtime) == 0


async def consumer_read_until(api: Api, key: str, name: str, count: int) -> list[dict[str, Any]]:
    """A consumer's events once `count` are readable (its position does not move)."""

    async def enough() -> list[dict[str, Any]] | None:
        r = await api.signed(key, "GET", f"/v1/consumers/{name}/events?limit=1000&wait_ms=1000")
        assert r.status == 200, r.body
        events: list[dict[str, Any]] = r.body["events"]
        return events if len(events) >= count else None

    return await eventually(enough, timeout=20)


# --- Server-Sent Events, read line by line ------------------------------------------------


@dataclass
class Message:
    id: str | None
    event: str | None
    data: dict[str, Any] | None  # None: a comment line
    comment: str = ""


class SseStream:
    """A raw, signed text/event-stream connection that hands back messages and comments."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, api: Api, key: str, path: str = "/v1/events/stream", last_event_id: str | None = None
    ) -> AsyncIterator[SseStream]:
        headers = signing.sign_headers(key, "GET", path, b"")
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with api.session.get(api.url + path, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            yield cls(resp)

    async def next(self, timeout: float = 10.0) -> Message | None:
        """The next message or comment; None at the end of the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                return Message(None, None, None, comment=line[1:].strip())
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
                continue
            if data:
                return Message(fields.get("id"), fields.get("event"), msgspec.json.decode("\n".join(data)))
            fields.clear()  # a message with no data (the retry field): nothing to dispatch

    async def events(self, n: int, timeout: float = 10.0) -> list[Message]:
        got: list[Message] = []
        while len(got) < n:
            m = await self.next(timeout)
            assert m is not None, "the stream ended"
            if m.data is not None:
                got.append(m)
        return got


# --- the cursor --------------------------------------------------------------------------


async def test_interleaved_transactions_cursor_passes_a_later_commit_yet_receives_the_earlier(
    api: Api, database_url: str
) -> None:
    key = await api.tenant("t")
    c1, c2 = await db.connect(database_url), await db.connect(database_url)
    try:
        # T2 takes its transaction id first; T1 writes its event first (the lower event id).
        t2 = c2.transaction()
        await t2.start()
        xid2 = await c2.fetchval("SELECT pg_current_xact_id()")
        t1 = c1.transaction()
        await t1.start()
        id1 = await insert_event(c1, "t", 1)
        xid1 = await c1.fetchval("SELECT pg_current_xact_id()")
        id2 = await insert_event(c2, "t", 2)
        await t2.commit()
        assert id1 < id2 and xid2 < xid1

        # The reader gets T2's event while T1 is still open: its cursor is past event id1.
        events, nxt = await read(api, key, wait_ms=10_000)
        assert [e["job_id"] for e in events] == ["2"]
        assert cursor(nxt) == db.Cursor(xid2, id2) and cursor(nxt).id > id1

        await t1.commit()
        events, nxt2 = await read(api, key, nxt, wait_ms=10_000)
        assert [e["job_id"] for e in events] == ["1"]
        assert cursor(nxt2) == db.Cursor(xid1, id1) > cursor(nxt)
        assert await read(api, key, nxt2) == ([], nxt2)
    finally:
        await c1.close()
        await c2.close()


async def test_events_of_an_open_older_transaction_hold_back_later_ones(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("t")
    c1, c2 = await db.connect(database_url), await db.connect(database_url)
    try:
        t1 = c1.transaction()
        await t1.start()
        await insert_event(c1, "t", 1)  # the older transaction, still open
        await insert_event(c2, "t", 2)  # committed at once
        # Nothing is returnable yet: handing out T2's event would move the cursor past T1's.
        assert await read(api, key) == ([], "0-0")
        poll = asyncio.create_task(read(api, key, wait_ms=20_000))
        await eventually(lambda: _parked(gateway))
        t0 = time.monotonic()
        await t1.commit()
        events, _ = await poll
        assert [e["job_id"] for e in events] == ["1", "2"]
        assert time.monotonic() - t0 < 3.0
    finally:
        await c1.close()
        await c2.close()


async def _parked(gateway: InProcessGateway) -> bool:
    return len(gateway.runtime.notifier.event_waiters) > 0


async def test_a_long_poll_waits_out_an_older_transaction_that_writes_no_event(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("t")
    c0, c2 = await db.connect(database_url), await db.connect(database_url)
    try:
        t0 = c0.transaction()
        await t0.start()
        await c0.fetchval("SELECT pg_current_xact_id()")  # holds back the xmin, and will notify nobody
        await insert_event(c2, "t", 2)
        assert await read(api, key) == ([], "0-0")
        poll = asyncio.create_task(read(api, key, wait_ms=20_000))
        await eventually(lambda: _parked(gateway))
        began = time.monotonic()
        await t0.commit()
        events, _ = await poll
        assert [e["job_id"] for e in events] == ["2"]
        assert time.monotonic() - began < 4.0  # found by the short re-check, not by the 20 s deadline
    finally:
        await c0.close()
        await c2.close()


async def test_a_rolled_back_event_never_appears(api: Api, database_url: str) -> None:
    key = await api.tenant("t")
    conn = await db.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await insert_event(conn, "t", 1)
        await tx.rollback()
        await insert_event(conn, "t", 2)
    finally:
        await conn.close()
    events, nxt = await read(api, key, wait_ms=10_000)
    assert [e["job_id"] for e in events] == ["2"]
    assert await read(api, key, nxt) == ([], nxt)
    async with SseStream.open(api, key) as s:
        (m,) = await s.events(1)
        assert m.data is not None and m.data["job_id"] == "2"
        # after it, only keep-alives: the rolled-back event is not coming
        nxt_message = await s.next()
        assert nxt_message is not None and nxt_message.comment == "keep-alive"


async def test_one_event_per_state_change_over_whole_lifecycles_in_order(api: Api, database_url: str) -> None:
    key = await api.tenant("t")

    async def submit(queue: str, **fields: Any) -> str:
        r = await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": queue, **fields})
        assert r.status == 201, r.body
        job_id: str = r.body["id"]
        return job_id

    # a: fails once, is retried, succeeds
    a = await submit("qa", max_attempts=3)
    first = await lease(api, key, "qa")
    r = await api.signed(
        key, "POST", f"/v1/jobs/{a}/fail", {"lease_token": first["lease_token"], "error": "boom", "retry_in_ms": 0}
    )
    assert r.body["state"] == "scheduled"
    second = await lease(api, key, "qa")
    r = await api.signed(key, "POST", f"/v1/jobs/{a}/complete", {"lease_token": second["lease_token"]})
    assert r.body["state"] == "succeeded"
    # b: cancelled while it waits
    b = await submit("qb")
    assert (await api.signed(key, "POST", f"/v1/jobs/{b}/cancel")).body["state"] == "cancelled"
    # c: dies on its only attempt, is replayed, succeeds
    c = await submit("qc", max_attempts=1)
    leased = await lease(api, key, "qc")
    r = await api.signed(key, "POST", f"/v1/jobs/{c}/fail", {"lease_token": leased["lease_token"], "error": "x"})
    assert r.body["state"] == "dead"
    assert (await api.signed(key, "POST", f"/v1/jobs/{c}/retry")).body["state"] == "ready"
    again = await lease(api, key, "qc")
    await api.signed(key, "POST", f"/v1/jobs/{c}/complete", {"lease_token": again["lease_token"]})

    expected = {
        a: ["job.created", "job.started", "job.retry_scheduled", "job.started", "job.succeeded"],
        b: ["job.created", "job.cancelled"],
        c: ["job.created", "job.started", "job.dead", "job.replayed", "job.started", "job.succeeded"],
    }
    total = sum(len(v) for v in expected.values())
    events, last = await read_until(api, key, total)
    assert len(events) == total == await fetchval(database_url, "SELECT count(*) FROM events WHERE tenant_id = 't'")
    assert await read(api, key, last) == ([], last)
    per_job: dict[str, list[str]] = defaultdict(list)
    for e in events:
        per_job[e["job_id"]].append(e["type"])
        assert e["tenant_id"] == "t"
    assert per_job == expected
    cursors = [cursor(e["id"]) for e in events]
    assert cursors == sorted(set(cursors))  # strictly increasing: each event once, in order
    started = [e for e in events if e["job_id"] == a and e["type"] == "job.started"]
    assert [e["data"]["lease_token"] for e in started] == [first["lease_token"], second["lease_token"]]


async def test_a_long_poll_answers_as_soon_as_an_event_commits(api: Api, gateway: InProcessGateway) -> None:
    key = await api.tenant("t")
    _, start = await read(api, key)
    poll = asyncio.create_task(read(api, key, start, wait_ms=20_000))
    await eventually(lambda: _parked(gateway))  # parked before the event exists: only a wake-up answers it
    t0 = time.monotonic()
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    events, _ = await poll
    assert [(e["job_id"], e["type"]) for e in events] == [(job["id"], "job.created")]
    assert time.monotonic() - t0 < 2.0  # woken by the commit's notification, not by the 20 s deadline
    # with nothing new, a long-poll answers empty at its deadline, keeping the cursor
    _, nxt = await read(api, key)
    t0 = time.monotonic()
    assert await read(api, key, nxt, wait_ms=300) == ([], nxt)
    assert 0.25 < time.monotonic() - t0 < 3.0


async def test_pages_follow_next(api: Api) -> None:
    key = await api.tenant("t")
    r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"n": n}} for n in range(7)]})
    jobs = [j["id"] for j in r.body["jobs"]]
    await read_until(api, key, 7)  # all seven readable (a transaction elsewhere can delay them)
    seen: list[str] = []
    after = None
    while True:
        page, nxt = await read(api, key, after, limit=3)
        if not page:
            assert nxt == after
            break
        assert nxt == page[-1]["id"]
        seen += [e["job_id"] for e in page]
        after = nxt
    assert seen == jobs


async def test_invalid_cursors_and_parameters_are_refused(api: Api) -> None:
    key = await api.tenant("t")
    for bad in ("abc", "12", "1-2-3", "-1-2", "99999999999999999999999-1", "1-99999999999999999999"):
        r = await api.signed(key, "GET", f"/v1/events?after={bad}")
        assert (r.status, r.body["field"]) == (422, "after"), (bad, r.body)
    # well formed, but past every transaction id the server has assigned
    r = await api.signed(key, "GET", f"/v1/events?after={2**62}-1")
    assert (r.status, r.body["field"]) == (422, "after"), r.body
    for query in ("limit=0", "limit=1001", "wait_ms=60001", "wait_ms=-1"):
        r = await api.signed(key, "GET", f"/v1/events?{query}")
        assert r.status in (400, 422), (query, r.body)
    r = await api.signed(key, "GET", "/v1/events/stream?after=nope")
    assert (r.status, r.body["field"]) == (422, "after")
    headers = signing.sign_headers(key, "GET", "/v1/events/stream", b"")
    async with api.session.get(api.url + "/v1/events/stream", headers={**headers, "Last-Event-ID": "nope"}) as resp:
        body = msgspec.json.decode(await resp.read())
        assert (resp.status, body["field"]) == (422, "Last-Event-ID")


# --- Server-Sent Events ------------------------------------------------------------------


async def test_sse_live_then_reconnect_with_last_event_id_gets_exactly_the_missed(
    api: Api, gateway: InProcessGateway
) -> None:
    key = await api.tenant("t")

    async def submit(n: int) -> list[str]:
        r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * n})
        return [j["id"] for j in r.body["jobs"]]

    async with SseStream.open(api, key) as s:
        first = await submit(3)
        got = await s.events(3)
        assert [m.data["job_id"] for m in got if m.data] == first
        assert all(m.event == "job.created" and m.data and m.id == m.data["id"] for m in got)
        more = await submit(1)
        (m,) = await s.events(1)
        assert m.data is not None and m.data["job_id"] == more[0]
        last_seen = m.id
    # the client is gone: its stream stops waiting
    await eventually(lambda: _no_waiters(gateway))

    missed = await submit(2)
    async with SseStream.open(api, key, last_event_id=last_seen) as s:
        got = await s.events(2)
        assert [m.data["job_id"] for m in got if m.data] == missed
        # exactly those: what follows is a keep-alive comment, not another event
        nxt = await s.next()
        assert nxt is not None and nxt.data is None and nxt.comment == "keep-alive"
        later = await submit(1)
        (m,) = await s.events(1)
        assert m.data is not None and m.data["job_id"] == later[0]


async def _no_waiters(gateway: InProcessGateway) -> bool:
    return len(gateway.runtime.notifier.event_waiters) == 0


async def test_sse_starts_at_the_oldest_retained_event_or_after_the_given_cursor(api: Api) -> None:
    key = await api.tenant("t")
    r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 3})
    ids = [j["id"] for j in r.body["jobs"]]
    async with SseStream.open(api, key) as s:
        got = await s.events(3)
        assert [m.data["job_id"] for m in got if m.data] == ids
    async with SseStream.open(api, key, f"/v1/events/stream?after={got[0].id}") as s:
        got2 = await s.events(2)
        assert [m.id for m in got2] == [m.id for m in got[1:]]
    # Last-Event-ID wins over after, as a reconnecting browser sends both
    async with SseStream.open(api, key, f"/v1/events/stream?after={got[0].id}", last_event_id=got[1].id) as s:
        (m,) = await s.events(1)
        assert m.id == got[2].id


async def test_an_open_stream_does_not_hold_up_gateway_shutdown(settings: Settings) -> None:
    gw = InProcessGateway(settings)
    await gw.start()
    api = Api(gw.url, ADMIN_TOKEN)
    stopped = False
    try:
        key = await api.tenant("t")
        async with SseStream.open(api, key) as s:
            assert await s.next() is not None
            t0 = time.monotonic()
            await asyncio.wait_for(gw.stop(), 10)
            stopped = True
            assert time.monotonic() - t0 < 3.0
            # the stream ended cleanly rather than being cut
            while (m := await s.next(5)) is not None:
                assert m.data is None
    finally:
        await api.close()
        if not stopped:
            await gw.stop()


# --- durable consumers -------------------------------------------------------------------


async def test_durable_consumers_each_get_every_event_at_their_own_pace(api: Api, database_url: str) -> None:
    key = await api.tenant("t")
    for name in ("billing", "audit"):
        r = await api.signed(key, "POST", "/v1/consumers", {"name": name})
        assert r.status == 201 and r.body["name"] == name and r.body["cursor"] == "0-0", r.body
    assert (await api.signed(key, "POST", "/v1/consumers", {"name": "audit"})).status == 409
    r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 5})
    ids = [j["id"] for j in r.body["jobs"]]

    # billing reads and acknowledges page by page
    seen: list[str] = []
    while len(seen) < 5:
        r = await api.signed(key, "GET", "/v1/consumers/billing/events?limit=2&wait_ms=5000")
        assert r.status == 200, r.body
        page = r.body["events"]
        # reading again without acknowledging gives the same page: the position did not move
        again = await api.signed(key, "GET", "/v1/consumers/billing/events?limit=2")
        assert again.body["events"] == page
        seen += [e["job_id"] for e in page]
        r = await api.signed(key, "POST", "/v1/consumers/billing/ack", {"cursor": page[-1]["id"]})
        assert r.status == 200 and r.body["cursor"] == page[-1]["id"]
    assert seen == ids
    assert (await api.signed(key, "GET", "/v1/consumers/billing/events")).body["events"] == []

    # audit has acknowledged nothing: it still gets all of them
    audit = await consumer_read_until(api, key, "audit", 5)
    assert [e["job_id"] for e in audit] == ids
    listed = (await api.signed(key, "GET", "/v1/consumers")).body["consumers"]
    assert {c["name"]: c["cursor"] for c in listed} == {"audit": "0-0", "billing": audit[-1]["id"]}
    conn = await db.connect(database_url)
    try:
        lags = await db.consumer_lags(conn)
        assert lags == [db.Backlog("t", "audit", 5), db.Backlog("t", "billing", 0)]
        assert await db.consumer_lags(conn, cap=3) == [db.Backlog("t", "audit", 3), db.Backlog("t", "billing", 0)]
    finally:
        await conn.close()


async def test_acknowledging_moves_forward_only_and_only_to_a_cursor_handed_out(api: Api) -> None:
    key = await api.tenant("t")
    other = await api.tenant("u")
    await api.signed(key, "POST", "/v1/consumers", {"name": "c"})
    await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 3})
    await api.signed(other, "POST", "/v1/jobs", {"payload": {}})
    events, _ = await read_until(api, key, 3)
    ids = [e["id"] for e in events]

    async def ack(value: str) -> Any:
        return await api.signed(key, "POST", "/v1/consumers/c/ack", {"cursor": value})

    assert (await ack(ids[1])).body["cursor"] == ids[1]
    # an older cursor changes nothing
    r = await ack(ids[0])
    assert (r.status, r.body["cursor"]) == (200, ids[1])
    # malformed, never handed out, another tenant's event: 422 naming the field
    (u_event,), _ = await read_until(api, other, 1)
    xid = cursor(ids[2]).xid
    for bad in ("nope", f"{xid}-{cursor(ids[2]).id + 1000}", u_event["id"], "1-2-3"):
        r = await ack(bad)
        assert (r.status, r.body.get("field")) == (422, "cursor"), (bad, r.body)
    assert (await ack(ids[2])).body["cursor"] == ids[2]
    assert (await api.signed(key, "POST", "/v1/consumers/nobody/ack", {"cursor": ids[0]})).status == 404
    assert (await api.signed(key, "GET", "/v1/consumers/c")).body["cursor"] == ids[2]
    assert (await api.signed(key, "DELETE", "/v1/consumers/c")).status == 204
    assert (await api.signed(key, "GET", "/v1/consumers/c")).status == 404
    assert (await api.signed(key, "DELETE", "/v1/consumers/c")).status == 404
    r = await api.signed(key, "POST", "/v1/consumers", {"name": "bad name"})
    assert (r.status, r.body["field"]) == (422, "name")
    r = await api.signed(key, "POST", "/v1/consumers", {"name": "x", "start": "middle"})
    assert (r.status, r.body["field"]) == (422, "start")


async def test_a_consumer_created_at_latest_skips_what_came_before(api: Api) -> None:
    key = await api.tenant("t")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
    await read_until(api, key, 1)
    r = await api.signed(key, "POST", "/v1/consumers", {"name": "tail", "start": "latest"})
    assert r.status == 201
    assert (await api.signed(key, "GET", "/v1/consumers/tail/events")).body["events"] == []
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    r = await api.signed(key, "GET", "/v1/consumers/tail/events?wait_ms=5000")
    assert [e["job_id"] for e in r.body["events"]] == [job["id"]]


# --- tenant isolation --------------------------------------------------------------------


async def test_a_tenant_never_sees_another_tenants_events(api: Api) -> None:
    a = await api.tenant("a")
    b = await api.tenant("b")
    for key in (a, b):
        assert (await api.signed(key, "POST", "/v1/consumers", {"name": "shared-name"})).status == 201
    async with SseStream.open(api, a) as stream:
        await api.signed(b, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 4})
        job_a = (await api.signed(a, "POST", "/v1/jobs", {"payload": {}})).body
        await api.signed(b, "POST", "/v1/jobs", {"payload": {}})
        (m,) = await stream.events(1)
        assert m.data is not None and (m.data["job_id"], m.data["tenant_id"]) == (job_a["id"], "a")
        nxt = await stream.next()
        assert nxt is not None and nxt.comment == "keep-alive"
    events, _ = await read_until(api, a, 1)
    assert await read(api, a, events[-1]["id"]) == ([], events[-1]["id"])
    assert [e["tenant_id"] for e in events] == ["a"]
    r = await api.signed(a, "GET", "/v1/consumers/shared-name/events")
    assert [e["job_id"] for e in r.body["events"]] == [job_a["id"]]
    b_events = await consumer_read_until(api, b, "shared-name", 5)
    assert len(b_events) == 5 and {e["tenant_id"] for e in b_events} == {"b"}
    # b's cursor means nothing to a: not one of its events
    r = await api.signed(a, "POST", "/v1/consumers/shared-name/ack", {"cursor": b_events[-1]["id"]})
    assert r.status == 422
    # and a shared worker key may not read events at all
    worker = await api.worker_key()
    assert (await api.signed(worker, "GET", "/v1/events")).status == 403


# --- retention ---------------------------------------------------------------------------


async def test_retention_prunes_old_events_and_a_cursor_before_them_is_gone(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("t")
    other = await api.tenant("u")
    await api.signed(key, "POST", "/v1/consumers", {"name": "early"})
    await api.signed(other, "POST", "/v1/consumers", {"name": "early"})
    jobs = (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 5})).body["jobs"]
    await api.signed(other, "POST", "/v1/jobs", {"payload": {}})
    events, _ = await read_until(api, key, 5)
    ids = [e["id"] for e in events]
    old = [int(j["id"]) for j in jobs[:3]]
    await fetch(database_url, "UPDATE events SET at = now() - interval '8 days' WHERE job_id = ANY($1)", old)

    await prune(gateway, 3)
    assert await fetchval(database_url, "SELECT count(*) FROM events WHERE tenant_id = 't'") == 2

    r = await api.signed(key, "GET", f"/v1/events?after={ids[0]}")
    assert r.status == 410, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "pruned" in r.body["detail"] and ids[2] in r.body["detail"]
    r = await api.signed(key, "GET", "/v1/events/stream?after=0-0")
    assert r.status == 410
    # at the horizon nothing was missed; without a cursor reading starts there
    assert [e["id"] for e in (await read(api, key, ids[2]))[0]] == ids[3:]
    assert [e["id"] for e in (await read(api, key))[0]] == ids[3:]
    async with SseStream.open(api, key) as s:
        assert [m.id for m in await s.events(2)] == ids[3:]
    # a consumer that fell behind the horizon is told so; one created now starts at it
    r = await api.signed(key, "GET", "/v1/consumers/early/events")
    assert r.status == 410 and "consumer" in r.body["detail"]
    await api.signed(key, "POST", "/v1/consumers", {"name": "late"})
    r = await api.signed(key, "GET", "/v1/consumers/late/events")
    assert [e["id"] for e in r.body["events"]] == ids[3:]
    # acknowledging a pruned event's cursor is accepted: it lies at or before the horizon
    assert (await api.signed(key, "POST", "/v1/consumers/early/ack", {"cursor": ids[2]})).status == 200
    assert [e["id"] for e in (await api.signed(key, "GET", "/v1/consumers/early/events")).body["events"]] == ids[3:]
    # the other tenant lost nothing, and its consumers are not gone
    r = await api.signed(other, "GET", "/v1/consumers/early/events")
    assert r.status == 200 and len(r.body["events"]) == 1
    metrics = (await api.admin("GET", "/metrics")).raw.decode()
    assert re.search(r"^orch_events_pruned_total(\{[^}]*\})? 3\.0$", metrics, re.M), metrics


async def test_pruning_runs_in_batches_and_keeps_young_events(gateway: InProcessGateway, database_url: str) -> None:
    await fetch(
        database_url,
        "INSERT INTO events (tenant_id, job_id, queue, type, at) "
        "SELECT 't' || (g % 3), g, 'q', 'job.created', now() - interval '30 days' FROM generate_series(1, 12000) g",
    )
    await fetch(
        database_url, "INSERT INTO events (tenant_id, job_id, queue, type) VALUES ('t0', 0, 'q', 'job.created')"
    )
    await prune(gateway, 12_000)
    assert await fetchval(database_url, "SELECT count(*) FROM events") == 1
    horizons = await fetch(database_url, "SELECT tenant_id FROM event_retention ORDER BY tenant_id")
    assert [h["tenant_id"] for h in horizons] == ["t0", "t1", "t2"]


async def test_the_pruner_runs_by_itself(settings: Settings, database_url: str) -> None:
    fast = msgspec.structs.replace(settings, event_retention_seconds=1, event_prune_interval_seconds=0.1)
    gw = InProcessGateway(fast)
    await gw.start()
    api = Api(gw.url, ADMIN_TOKEN)
    try:
        key = await api.tenant("t")
        await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
        (event,), _ = await read_until(api, key, 1)

        async def pruned() -> bool:
            return bool(await fetchval(database_url, "SELECT count(*) FROM events") == 0)

        await eventually(pruned, timeout=10)
        assert (await api.signed(key, "GET", "/v1/events?after=0-0")).status == 410
        assert (await api.signed(key, "GET", f"/v1/events?after={event['id']}")).status == 200
    finally:
        await api.close()
        await gw.stop()


# --- the SDK -----------------------------------------------------------------------------


class FixedPortGateway(InProcessGateway):
    """An in-process gateway on a given port, so a client can find it again after a restart."""

    def __init__(self, settings: Settings, port: int) -> None:
        super().__init__(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)


@pytest.mark.parametrize("mode", ["poll", "sse"])
async def test_sdk_iterates_in_order_and_resumes_across_a_gateway_restart(
    settings: Settings, database_url: str, mode: sdk._events.Mode
) -> None:
    port = free_port()
    gw = FixedPortGateway(settings, port)
    await gw.start()
    api = Api(gw.url, ADMIN_TOKEN)
    key = await api.tenant("t")
    client = sdk.EventsClient(gw.url, api_key=key, sse_idle_timeout_s=5)
    events = client.iter(mode=mode, wait_ms=2000)
    try:
        first = (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 3})).body["jobs"]
        got = [await asyncio.wait_for(anext(events), 10) for _ in range(3)]
        assert [e.job_id for e in got] == [j["id"] for j in first]
        assert isinstance(got[0], sdk.Event) and client.last_cursor == got[-1].id

        # the gateway goes away; events keep being written (through another gateway, say)
        pending = asyncio.ensure_future(anext(events))
        await gw.stop()
        conn = await db.connect(database_url)
        try:
            for job_id in (101, 102):
                await insert_event(conn, "t", job_id)
        finally:
            await conn.close()
        assert not pending.done()
        gw = FixedPortGateway(settings, port)
        await gw.start()
        later = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
        rest = [await asyncio.wait_for(pending, 20)]
        rest += [await asyncio.wait_for(anext(events), 20) for _ in range(2)]
        assert [e.job_id for e in rest] == ["101", "102", later["id"]]
    finally:
        await events.aclose()
        await client.close()
        await api.close()
        await gw.stop()


async def test_sdk_consumers_and_errors(api: Api) -> None:
    key = await api.tenant("t")
    async with sdk.EventsClient(api.url, api_key=key) as client:
        billing = client.consumer("billing")
        created = await billing.create()
        assert created.cursor == "0-0" and (await billing.create()).name == "billing"
        with pytest.raises(sdk.Conflict):
            await billing.create(exist_ok=False)
        jobs = (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 4})).body["jobs"]
        seen: list[str] = []
        events = billing.iter(limit=3, wait_ms=2000)
        async for event in events:
            seen.append(event.job_id)
            if len(seen) == 4:
                break
        await events.aclose()
        assert seen == [j["id"] for j in jobs]
        # the first page (3 events) was acknowledged once the loop had taken all of it
        assert (await billing.get()).cursor == (await client.read(limit=3)).next
        assert [c.name for c in await client.consumers()] == ["billing"]
        await billing.delete()
        with pytest.raises(sdk.NotFound):
            await billing.get()
        with pytest.raises(sdk.InvalidRequest) as bad:
            await client.read(after="nope")
        assert bad.value.field == "after"


async def test_sdk_raises_gone_for_a_pruned_cursor(api: Api, gateway: InProcessGateway, database_url: str) -> None:
    key = await api.tenant("t")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
    await read_until(api, key, 1)
    await fetch(database_url, "UPDATE events SET at = now() - interval '30 days'")
    await prune(gateway, 1)
    async with sdk.EventsClient(api.url, api_key=key) as client:
        with pytest.raises(sdk.Gone):
            await client.read(after="0-0")
        modes: list[sdk._events.Mode] = ["poll", "sse"]
        for mode in modes:
            with pytest.raises(sdk.Gone):
                await anext(client.iter(after="0-0", mode=mode))


def test_verify_webhook() -> None:
    body = b'{"id":"1-2"}'
    ts = str(int(time.time()))
    sig = signing.webhook_signature("s3cret-s3cret-s3cret", ts, body)
    assert sdk.verify_webhook("s3cret-s3cret-s3cret", ts, body, sig)
    assert sdk.verify_webhook("s3cret-s3cret-s3cret", ts, body.decode(), sig.upper())
    assert not sdk.verify_webhook("another-secret-here", ts, body, sig)
    assert not sdk.verify_webhook("s3cret-s3cret-s3cret", ts, body + b" ", sig)
    assert not sdk.verify_webhook("s3cret-s3cret-s3cret", ts, body, sig, now=time.time() + 301)
    assert sdk.verify_webhook("s3cret-s3cret-s3cret", ts, body, sig, tolerance_s=600, now=time.time() + 301)
    assert not sdk.verify_webhook("s3cret-s3cret-s3cret", "soon", body, sig)
