"""Webhooks: signed deliveries in order through failures and retries, parking and resuming,
registration rules, tenant isolation, and one endpoint served by two gateway processes."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiohttp import web

import db
import sdk
from core import Settings

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, InProcessGateway, eventually, free_port

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_test_secret_0123456789"
MAX_ATTEMPTS = 4


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        reap_interval_seconds=0.2,
        webhook_retry_base_ms=20,
        webhook_retry_cap_ms=100,
        webhook_max_attempts=MAX_ATTEMPTS,
        webhook_timeout_seconds=0.5,
        webhook_poll_seconds=0.5,
        # the receivers below listen on loopback, which webhooks may reach only when allowed
        webhook_allow_hosts=("127.0.0.1",),
    )


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = msgspec.json.decode(self.body)
        return value


@dataclass
class Receiver:
    """A webhook endpoint on a free loopback port. `answer(attempt_number)` picks the reply
    (None: 204, delivered); attempts in `slow` take longer than the gateway waits."""

    answer: Callable[[int], web.StreamResponse | None] = lambda _n: None
    delay_s: float = 0.0
    slow: set[int] = field(default_factory=set)
    attempts: int = 0
    delivered: list[Delivery] = field(default_factory=list)
    redirected_hits: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        n = self.attempts
        if n in self.slow:
            await asyncio.sleep(2.0)
            return web.Response(status=504)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self.answer(n)
        if reply is not None:
            return reply
        self.delivered.append(Delivery(dict(request.headers), body))
        return web.Response(status=204)

    async def _elsewhere(self, _request: web.Request) -> web.StreamResponse:
        self.redirected_hits += 1
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/elsewhere", self._elsewhere)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    runner = await r.start()
    try:
        yield r
    finally:
        await runner.cleanup()


async def register(api: Api, key: str, url: str, **fields: Any) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/webhooks", {"url": url, "secret": SECRET, **fields})
    assert r.status == 201, r.body
    body: dict[str, Any] = r.body
    return body


async def tenant_events(api: Api, key: str, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = None
    deadline = time.monotonic() + 20
    while len(events) < count:
        assert time.monotonic() < deadline
        path = "/v1/events?wait_ms=5000" + (f"&after={after}" if after else "")
        r = await api.signed(key, "GET", path)
        events += r.body["events"]
        after = r.body["next"]
    return events


def check_signed(d: Delivery, webhook_id: str) -> None:
    h = d.headers
    assert h["X-Orch-Webhook-Id"] == webhook_id
    assert h["X-Orch-Event-Id"] == d.event["id"]
    assert h["Content-Type"] == "application/json"
    assert sdk.verify_webhook(SECRET, h["X-Orch-Timestamp"], d.body, h["X-Orch-Signature"])


async def test_every_event_arrives_in_order_signed_through_failed_attempts(api: Api, receiver: Receiver) -> None:
    failures = MAX_ATTEMPTS - 1  # one short of parking
    receiver.answer = lambda n: web.Response(status=503, text="busy") if n <= failures else None
    key = await api.tenant("t")
    hook = await register(api, key, receiver.url)
    assert hook["state"] == "active" and hook["delivered"] == 0 and hook["secret"] is None
    jobs = (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"n": n}} for n in range(5)]})).body
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 2, "wait_ms": 0})
    assert len(r.body["jobs"]) == 2
    expected = await tenant_events(api, key, 7)

    async def all_delivered() -> bool:
        return len(receiver.delivered) >= 7

    await eventually(all_delivered, timeout=20)
    assert [d.event for d in receiver.delivered] == expected
    assert receiver.attempts == failures + 7  # each event delivered once
    for d in receiver.delivered:
        check_signed(d, hook["id"])
    assert [d.event["job_id"] for d in receiver.delivered[:5]] == [j["id"] for j in jobs["jobs"]]

    state = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
    assert (state["state"], state["attempts"], state["delivered"]) == ("active", 0, 7)
    assert (state["cursor"], state["last_status"], state["last_error"]) == (expected[-1]["id"], 204, None)
    counts = delivery_counts((await api.admin("GET", "/metrics")).raw.decode())
    assert counts == {"failed": failures, "delivered": 7}


async def test_an_endpoint_that_never_succeeds_is_parked_then_resumed(
    api: Api, receiver: Receiver, database_url: str
) -> None:
    failing = True
    receiver.answer = lambda _n: web.Response(status=500, text="it broke") if failing else None
    key = await api.tenant("t")
    hook = await register(api, key, receiver.url)
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})

    async def parked() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
        return body if body["state"] == "parked" else None

    state = await eventually(parked, timeout=20)
    assert (state["attempts"], state["last_status"], state["delivered"]) == (MAX_ATTEMPTS, 500, 0)
    assert state["last_error"] == "HTTP 500"  # the receiver's body is never echoed
    assert receiver.attempts == MAX_ATTEMPTS

    # parked: events pile up undelivered until the endpoint is resumed
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
    expected = await tenant_events(api, key, 2)
    conn = await db.connect(database_url)
    try:
        assert await db.webhook_backlogs(conn) == [db.Backlog("t", hook["id"], 2)]
    finally:
        await conn.close()
    failing = False
    r = await api.signed(key, "POST", f"/v1/webhooks/{hook['id']}/resume")
    assert (r.status, r.body["state"], r.body["attempts"]) == (200, "active", 0)

    async def caught_up() -> bool:
        return len(receiver.delivered) >= 2

    await eventually(caught_up, timeout=20)
    assert [d.event for d in receiver.delivered] == expected
    assert receiver.attempts == MAX_ATTEMPTS + 2


async def _at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.delivered) >= n


def delivery_counts(metrics: str) -> dict[str, float]:
    """Webhook delivery attempts by outcome, leaving out the outcomes still at zero."""
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^orch_webhook_deliveries_total\{.*outcome="(\w+)".*\} (\S+)$', metrics, re.M)
    }
    return {outcome: n for outcome, n in counts.items() if n}


async def test_timeouts_and_redirects_are_failures_and_redirects_are_not_followed(api: Api, receiver: Receiver) -> None:
    # attempt 1 answers with a redirect, attempt 3 outlasts the delivery timeout (0.5 s)
    receiver.answer = lambda n: web.HTTPFound(f"http://127.0.0.1:{receiver.port}/elsewhere") if n == 1 else None
    receiver.slow = {3}
    key = await api.tenant("t")
    hook = await register(api, key, receiver.url)
    await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 2})
    expected = await tenant_events(api, key, 2)

    async def delivered() -> bool:
        return len(receiver.delivered) == 2

    await eventually(delivered, timeout=15)
    assert [d.event for d in receiver.delivered] == expected
    assert receiver.redirected_hits == 0
    assert receiver.attempts == 4  # redirect, delivered, timed out, delivered
    state = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
    assert (state["delivered"], state["attempts"], state["state"]) == (2, 0, "active")
    assert delivery_counts((await api.admin("GET", "/metrics")).raw.decode()) == {"failed": 2, "delivered": 2}


async def test_a_failure_is_visible_until_the_next_delivery(settings: Settings, receiver: Receiver) -> None:
    # The first attempt fails; the retry waits 1 to 2 s, time enough to look at the endpoint.
    receiver.answer = lambda n: web.Response(status=418, text="teapot") if n == 1 else None
    slow_retry = msgspec.structs.replace(settings, webhook_retry_base_ms=2000, webhook_retry_cap_ms=2000)
    gw = InProcessGateway(slow_retry)
    await gw.start()
    api = Api(gw.url, ADMIN_TOKEN)
    try:
        key = await api.tenant("t")
        hook = await register(api, key, receiver.url)
        await api.signed(key, "POST", "/v1/jobs", {"payload": {}})

        async def failed() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
            return body if body["attempts"] >= 1 else None

        state = await eventually(failed, timeout=10)
        assert (state["attempts"], state["state"], state["delivered"]) == (1, "active", 0)
        assert (state["last_status"], state["last_error"]) == (418, "HTTP 418")
        last, retry_at = (datetime.fromisoformat(state[k]) for k in ("last_attempt_at", "next_attempt_at"))
        assert retry_at - last >= timedelta(seconds=0.9)

        async def recovered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
            return body if body["delivered"] == 1 else None

        state = await eventually(recovered, timeout=10)
        assert (state["attempts"], state["last_status"], state["last_error"]) == (0, 204, None)
        assert receiver.attempts == 2
    finally:
        await api.close()
        await gw.stop()


async def test_registration_rules(api: Api, gateway: InProcessGateway, receiver: Receiver) -> None:
    key = await api.tenant("t")
    other = await api.tenant("u")
    port = gateway.url.rsplit(":", 1)[1]
    for url in (
        "ftp://127.0.0.1/x",
        "not a url",
        "http:///no-host",
        "http://127.0.0.1:99999/x",
        gateway.url + "/v1/jobs",
        f"http://localhost:{port}/hook",
        f"http://[::1]:{port}/hook",
    ):
        r = await api.signed(key, "POST", "/v1/webhooks", {"url": url})
        assert (r.status, r.body.get("field")) == (422, "url"), (url, r.body)
    for body in (
        {"url": receiver.url, "event_types": ["job.exploded"]},
        {"url": receiver.url, "secret": "short"},
        {"url": receiver.url, "unknown": 1},
    ):
        r = await api.signed(key, "POST", "/v1/webhooks", body)
        assert r.status == 422, (body, r.body)

    # without a secret one is generated and shown once
    r = await api.signed(key, "POST", "/v1/webhooks", {"url": receiver.url, "event_types": ["job.dead"]})
    assert r.status == 201 and r.body["secret"].startswith("whsec_") and len(r.body["secret"]) > 32
    hook = r.body
    got = (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
    assert got["secret"] is None and got["event_types"] == ["job.dead"] and got["url"] == receiver.url
    listed = (await api.signed(key, "GET", "/v1/webhooks")).body["webhooks"]
    assert [w["id"] for w in listed] == [hook["id"]] and listed[0]["secret"] is None

    # another tenant's endpoint does not exist for you
    assert (await api.signed(other, "GET", f"/v1/webhooks/{hook['id']}")).status == 404
    assert (await api.signed(other, "DELETE", f"/v1/webhooks/{hook['id']}")).status == 404
    assert (await api.signed(other, "POST", f"/v1/webhooks/{hook['id']}/resume")).status == 404
    assert (await api.signed(other, "GET", "/v1/webhooks")).body["webhooks"] == []
    assert (await api.signed(key, "GET", "/v1/webhooks/abc")).status == 404

    assert (await api.signed(key, "DELETE", f"/v1/webhooks/{hook['id']}")).status == 204
    assert (await api.signed(key, "GET", f"/v1/webhooks/{hook['id']}")).status == 404


async def test_an_endpoint_gets_only_the_types_it_asked_for_and_only_its_tenants(api: Api, receiver: Receiver) -> None:
    a = await api.tenant("a")
    b = await api.tenant("b")
    hook = await register(api, a, receiver.url, event_types=["job.succeeded", "job.dead"])

    async def run(key: str, succeed: bool) -> str:
        job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 1})).body
        r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 5000})
        token = r.body["jobs"][0]["lease_token"]
        if succeed:
            await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": token})
        else:
            await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": token, "error": "x"})
        job_id: str = job["id"]
        return job_id

    await run(b, True)
    a_job = await run(a, True)
    await run(b, False)
    a_job2 = await run(a, False)
    everything = await tenant_events(api, a, 6)

    async def two() -> bool:
        return len(receiver.delivered) >= 2

    await eventually(two, timeout=20)
    assert [(d.event["job_id"], d.event["type"]) for d in receiver.delivered] == [
        (a_job, "job.succeeded"),
        (a_job2, "job.dead"),
    ]

    async def passed_over_the_rest() -> bool:
        state = (await api.signed(a, "GET", f"/v1/webhooks/{hook['id']}")).body
        return bool(state["cursor"] == everything[-1]["id"])

    await eventually(passed_over_the_rest, timeout=10)
    assert all(d.event["tenant_id"] == "a" for d in receiver.delivered)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_gateway_processes_deliver_one_endpoint_in_order_without_duplicates(
    database_url: str, receiver: Receiver
) -> None:
    # Every 15th attempt fails. The holder gives its lease up and both processes wake for the
    # retry (1 to 2 s later) and race to claim the endpoint, so delivery moves between them; the
    # receiver is a little slow, so while one delivers the other finds the endpoint leased.
    receiver.answer = lambda n: web.Response(status=503) if n % 15 == 0 else None
    receiver.delay_s = 0.002
    env = {
        **os.environ,
        "ORCH_WEBHOOK_RETRY_BASE_MS": "2000",
        "ORCH_WEBHOOK_RETRY_CAP_MS": "2000",
        "ORCH_WEBHOOK_MAX_ATTEMPTS": "50",
        "ORCH_WEBHOOK_POLL_SECONDS": "0.2",
        "ORCH_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    }
    gateways = [GatewayProcess(database_url, ADMIN_TOKEN, env=env) for _ in range(2)]
    apis = [Api(gw.url, ADMIN_TOKEN) for gw in gateways]
    try:
        await asyncio.gather(*(gw.wait_ready() for gw in gateways))
        key = await apis[0].tenant("t")
        hook = await register(apis[1], key, receiver.url)
        total = 0

        async def delivered_by_each() -> list[float]:
            counts = [delivery_counts((await a.admin("GET", "/metrics")).raw.decode()) for a in apis]
            return [c.get("delivered", 0.0) for c in counts]

        async def both_delivered() -> list[float] | None:
            """Another batch of events, delivered in full; done once each process delivered some."""
            nonlocal total
            body = {"jobs": [{"payload": {"i": total, "n": n}} for n in range(10)]}
            r = await apis[total // 10 % 2].signed(key, "POST", "/v1/jobs/batch", body)
            assert r.status == 201, r.body
            total += 10
            await eventually(lambda: _at_least(receiver, total), timeout=30)
            per_process = await delivered_by_each()
            return per_process if total >= 80 and all(per_process) else None

        # Which process takes the endpoint after a failure is a race; more batches, more races.
        per_process = await eventually(both_delivered, timeout=90, every=0)
        expected = await tenant_events(apis[0], key, total)
        ids = [d.event["id"] for d in receiver.delivered]
        assert ids == [e["id"] for e in expected]  # in order, each once
        assert len(set(ids)) == len(ids)
        for d in receiver.delivered:
            check_signed(d, hook["id"])
        assert db.Cursor.parse(ids[-1]) is not None
        state = (await apis[0].signed(key, "GET", f"/v1/webhooks/{hook['id']}")).body
        assert state["delivered"] == total
        # each delivery was made, and counted, by exactly one of the two processes
        assert sum(await delivered_by_each()) == total, per_process
        print(f"{total} events delivered per process:", per_process)
    finally:
        for a in apis:
            await a.close()
        for gw in gateways:
            gw.stop()
