"""What a tenant must not be able to do with a webhook: reach the gateway's internal network, read
what an internal service or socket says through `last_error`, break registration with a
malformed URL or Host header, or keep an endpoint from every gateway by an interrupted or
stalled delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web

import db
from core import Settings, load_settings
from gateway.services.webhook_publisher import CheckedResolver, DestinationPolicy, RefusedDestination, address_class

from .conftest import ADMIN_TOKEN
from .support import (
    Api,
    InProcessGateway,
    eventually,
    fetch,
    fetchval,
    free_port,
    metric_samples,
    metric_total,
    running,
    serve_routes,
)

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_test_secret_0123456789"
LOCAL = ("127.0.0.1",)


def gateway_settings(database_url: str, allow: tuple[str, ...] = (), **fields: Any) -> Settings:
    base = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        reap_interval_seconds=0.2,
        webhook_retry_base_ms=20,
        webhook_retry_cap_ms=100,
        webhook_max_attempts=3,
        webhook_timeout_seconds=0.5,
        webhook_poll_seconds=0.5,
        webhook_allow_hosts=allow,
    )
    return msgspec.structs.replace(base, **fields)


@asynccontextmanager
async def gateway_api(settings: Settings) -> AsyncIterator[tuple[InProcessGateway, Api]]:
    async with running(InProcessGateway(settings)) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            yield gw, api
        finally:
            await api.close()


@dataclass
class Receiver:
    """An endpoint on a free loopback port. `answer(n)` replies to attempt n (None: 204); while
    `hold` is set for attempt n, that attempt waits until `release` is set."""

    answer: Callable[[int], web.StreamResponse | None] = lambda _n: None
    hold: set[int] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    delay_s: float = 0.0
    attempts: int = 0
    delivered: list[dict[str, Any]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        n = self.attempts
        if n in self.hold:
            await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self.answer(n)
        if reply is not None:
            return reply
        self.delivered.append(msgspec.json.decode(body))
        return web.Response(status=204)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Receiver]:
        async with serve_routes(self.port, {"/hook": self._hook}):
            try:
                yield self
            finally:
                self.release.set()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().serving() as r:
        yield r


async def register(api: Api, key: str, url: str) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/webhooks", {"url": url, "secret": SECRET})
    assert r.status == 201, (url, r.body)
    body: dict[str, Any] = r.body
    return body


async def webhook(api: Api, key: str, hook_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.signed(key, "GET", f"/v1/webhooks/{hook_id}")).body
    return body


# --- which addresses are refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("::127.0.0.1", "reserved"),  # IPv4-compatible, deprecated
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_classes(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


def test_the_allow_list_admits_names_addresses_and_networks_and_ignores_nonsense() -> None:
    policy = DestinationPolicy(["127.0.0.1", " 10.0.0.0/8 ", "[fd00::1]", "Hooks.Internal.", "10.0.0.0/33", "a b"])
    ip = ipaddress.ip_address
    assert policy.refusal(ip("127.0.0.1")) is None
    assert policy.refusal(ip("::ffff:127.0.0.1")) is None  # the same place
    assert policy.refusal(ip("127.0.0.2")) == "loopback"
    assert policy.refusal(ip("10.200.0.1")) is None
    assert policy.refusal(ip("fd00::1")) is None
    assert policy.refusal(ip("fd00::2")) == "unique-local"
    assert policy.refusal(ip("169.254.169.254")) == "link-local"
    assert policy.allows_name("hooks.internal") and policy.allows_name("HOOKS.internal.")
    assert not policy.allows_name("other.internal")
    assert policy.names == {"hooks.internal"}  # the malformed entries allow nothing
    assert len(policy.networks) == 3


def test_the_allow_list_comes_from_the_environment() -> None:
    env = {"ORCH_WEBHOOK_ALLOW_HOSTS": " 127.0.0.1, hooks.internal ,,10.0.0.0/8,"}
    assert load_settings(env).webhook_allow_hosts == ("127.0.0.1", "hooks.internal", "10.0.0.0/8")
    assert load_settings({}).webhook_allow_hosts == () == Settings().webhook_allow_hosts


async def test_the_resolver_keeps_only_allowed_addresses() -> None:
    # `localhost` resolves through the system resolver, to loopback addresses only.
    strict = CheckedResolver(DestinationPolicy([]))
    with pytest.raises(RefusedDestination):
        await strict.resolve("localhost", 80, socket.AF_UNSPEC)
    await strict.close()
    lenient = CheckedResolver(DestinationPolicy(["127.0.0.0/8"]))
    found = await lenient.resolve("localhost", 80, socket.AF_UNSPEC)
    assert found and {r["host"] for r in found} <= {f"127.0.0.{n}" for n in range(256)}
    await lenient.close()


# --- registration ------------------------------------------------------------------------------

REFUSED_URLS = [
    "http://127.0.0.1:5432/",
    "http://127.8.9.10/hook",
    "http://localhost:8080/hook",  # a name resolving to loopback only
    "http://LOCALHOST./hook",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://0.0.0.0:8000/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "https://255.255.255.255/",
    "http://[::1]:5432/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    # legacy spellings of 127.0.0.1
    "http://2130706433/",
    "http://127.1/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
]


async def test_registration_refuses_internal_destinations(database_url: str) -> None:
    async with gateway_api(gateway_settings(database_url)) as (_gw, api):
        key = await api.tenant("t")
        for url in REFUSED_URLS:
            r = await api.signed(key, "POST", "/v1/webhooks", {"url": url})
            assert (r.status, r.body.get("field")) == (422, "url"), (url, r.body)
        detail = (await api.signed(key, "POST", "/v1/webhooks", {"url": "http://169.254.169.254/"})).body["detail"]
        assert "link-local" in detail
        detail = (await api.signed(key, "POST", "/v1/webhooks", {"url": "http://localhost/"})).body["detail"]
        assert "resolves only to refused addresses (loopback)" in detail
        assert (await api.signed(key, "GET", "/v1/webhooks")).body["webhooks"] == []

        # Public addresses pass; so does a name that does not resolve (yet): delivery decides.
        for url in (
            "https://93.184.215.14/hook",
            "http://[2606:4700::1111]/hook",
            "http://[::ffff:8.8.8.8]/hook",
            "https://nothing-here.invalid/hook",
        ):
            await register(api, key, url)


async def test_malformed_urls_and_host_headers_are_client_errors(database_url: str) -> None:
    async with gateway_api(gateway_settings(database_url, allow=LOCAL)) as (_gw, api):
        key = await api.tenant("t")
        for url in ("http://[::1/x", "http://[::1", "http://host:abc/", "http://ex ample.com/", "http://a\\@b/"):
            r = await api.signed(key, "POST", "/v1/webhooks", {"url": url})
            assert (r.status, r.body.get("field")) == (422, "url"), (url, r.body)
        for host in ("[::1", "example.com:abc", "example.com:99999"):
            r = await api.signed_with_headers(
                key, "POST", "/v1/webhooks", {"url": "https://93.184.215.14/hook"}, {"Host": host}
            )
            assert r.status == 400, (host, r.status, r.body)
            assert r.body["status"] == 400 and "Host" in r.body["detail"]


# --- the allow-list ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "host"),
    [
        (("127.0.0.1",), "127.0.0.1"),
        (("127.0.0.1",), "localhost"),  # resolved, then checked address by address
        (("127.0.0.0/8",), "localhost"),
        (("localhost",), "localhost"),  # a name the operator vouches for
        (("::ffff:127.0.0.1",), "127.0.0.1"),
    ],
)
async def test_the_allow_list_lets_a_local_receiver_through(
    database_url: str, receiver: Receiver, allow: tuple[str, ...], host: str
) -> None:
    async with gateway_api(gateway_settings(database_url, allow=allow)) as (_gw, api):
        key = await api.tenant("t")
        hook = await register(api, key, receiver.url(host))
        job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body

        async def delivered() -> dict[str, Any] | None:
            state = await webhook(api, key, hook["id"])
            return state if state["delivered"] == 1 else None

        state = await eventually(delivered, timeout=15)
        assert (state["last_status"], state["last_error"]) == (204, None)
        assert [e["job_id"] for e in receiver.delivered] == [job["id"]]


async def test_delivery_checks_the_address_it_connects_to(database_url: str, receiver: Receiver) -> None:
    """An endpoint accepted earlier is refused when, at delivery, it leads to an address this
    gateway may not reach: the name is resolved again and every address checked, and a literal
    address is checked on the socket (here another gateway, without the allow-list, delivers)."""
    allowed = gateway_settings(database_url, allow=LOCAL)
    async with gateway_api(allowed) as (_gw, api):
        key = await api.tenant("t")
        by_name = await register(api, key, receiver.url("localhost"))
        by_address = await register(api, key, receiver.url("127.0.0.1"))
        mapped = await register(api, key, receiver.url("[::ffff:127.0.0.1]"))
    async with gateway_api(gateway_settings(database_url, webhook_max_attempts=2)) as (_gw, api):
        await api.signed(key, "POST", "/v1/jobs", {"payload": {}})

        async def parked() -> list[dict[str, Any]] | None:
            states = [await webhook(api, key, h["id"]) for h in (by_name, by_address, mapped)]
            return states if all(s["state"] == "parked" for s in states) else None

        for state in await eventually(parked, timeout=15):
            assert (state["attempts"], state["last_status"]) == (2, None), state
            assert state["last_error"] == "refused destination", state
    assert receiver.attempts == 0


# --- what last_error may say -------------------------------------------------------------------


@asynccontextmanager
async def hang_up_server() -> AsyncIterator[int]:
    """A TCP server that reads the request and closes the connection without an answer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_last_error_is_a_status_or_a_class_of_error_never_what_the_other_side_said(
    database_url: str, receiver: Receiver
) -> None:
    leak = "db password is hunter2 (internal detail)"
    receiver.answer = lambda _n: web.Response(status=500, text=leak, headers={"X-Leak": leak})
    slow = Receiver(hold={1})
    settings = gateway_settings(database_url, allow=LOCAL, webhook_max_attempts=1)
    async with slow.serving(), hang_up_server() as hang_up_port, gateway_api(settings) as (_gw, api):
        key = await api.tenant("t")
        expected = {
            "HTTP 500": receiver.url(),
            "connection refused": f"http://127.0.0.1:{free_port()}/hook",
            "TLS error": receiver.url(scheme="https"),
            "timeout": slow.url(),
            "DNS failure": "http://nothing-here.invalid/hook",
            "connection closed": f"http://127.0.0.1:{hang_up_port}/hook",
        }
        hooks = {error: await register(api, key, url) for error, url in expected.items()}
        await api.signed(key, "POST", "/v1/jobs", {"payload": {}})

        async def all_parked() -> dict[str, dict[str, Any]] | None:
            states = {error: await webhook(api, key, h["id"]) for error, h in hooks.items()}
            return states if all(s["state"] == "parked" for s in states.values()) else None

        states = await eventually(all_parked, timeout=20)
        assert {error: s["last_error"] for error, s in states.items()} == {e: e for e in expected}
        assert states["HTTP 500"]["last_status"] == 500
        assert all(s["last_status"] is None for e, s in states.items() if e != "HTTP 500")
        assert receiver.attempts == 1


# --- the endpoint lease ------------------------------------------------------------------------


async def lease_of(database_url: str, hook_id: str) -> tuple[str | None, int]:
    """The endpoint's lease as stored: its holder (None: nobody) and its token."""
    rows = await fetch(database_url, "SELECT lease_owner, lease_token FROM webhooks WHERE id = $1", int(hook_id))
    return rows[0]["lease_owner"], rows[0]["lease_token"]


def delivery_task(hook_id: str) -> asyncio.Task[Any] | None:
    """The publisher's task delivering this endpoint (the gateway runs in the test's loop)."""
    return next((t for t in asyncio.all_tasks() if t.get_name() == f"webhook-{hook_id}"), None)


async def holding(database_url: str, hook_id: str) -> str | None:
    return (await lease_of(database_url, hook_id))[0]


async def released(database_url: str, hook_id: str) -> bool:
    return await holding(database_url, hook_id) is None


async def lease_counts(api: Api) -> dict[str, float]:
    samples = metric_samples((await api.admin("GET", "/metrics")).raw.decode())
    return {o: metric_total(samples, "orch_webhook_leases_total", outcome=o) for o in ("claimed", "taken_over", "lost")}


# A 30 s time limit makes leases of 65 s: an endpoint free again within seconds was given up.
LONG_LEASE = 30.0


async def test_a_delivery_cancelled_while_the_receiver_hangs_gives_its_lease_up(
    database_url: str, receiver: Receiver
) -> None:
    receiver.hold = {1}
    settings = gateway_settings(database_url, allow=LOCAL, webhook_timeout_seconds=LONG_LEASE)
    async with gateway_api(settings) as (_gw, api):
        key = await api.tenant("t")
        hook = await register(api, key, receiver.url())
        job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
        await eventually(lambda: _true_if(receiver.attempts == 1))
        await eventually(lambda: holding(database_url, hook["id"]))
        task = delivery_task(hook["id"])
        assert task is not None
        task.cancel()
        # Freed at once, and delivered on the next round; the hung attempt never answers.

        async def delivered() -> bool:
            return bool((await webhook(api, key, hook["id"]))["delivered"] == 1)

        await eventually(delivered, timeout=5)
        await eventually(lambda: released(database_url, hook["id"]), timeout=5)
        assert [e["job_id"] for e in receiver.delivered] == [job["id"]]
        assert (await lease_counts(api))["claimed"] == 2


async def waits_on_the_table(database_url: str, statement: str) -> bool:
    """Whether a statement containing `statement` waits for a lock."""
    n = await fetchval(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
        statement,
    )
    return bool(n)


@pytest.mark.parametrize("cancels", ["once", "until_done"])
async def test_a_delivery_cancelled_inside_a_statement_gives_its_lease_up(
    database_url: str, receiver: Receiver, cancels: str
) -> None:
    # While the receiver holds the first attempt, the test locks the table against writes (a
    # table lock takes no xid, which would hold the event back), so recording the delivery waits.
    # Cancelled there, and cancelled again while it cleans up (a shutdown on top of a shutdown),
    # the delivery still gives its lease up once the table is free: long before it runs out.
    receiver.hold = {1}
    settings = gateway_settings(database_url, allow=LOCAL, webhook_timeout_seconds=LONG_LEASE)
    async with gateway_api(settings) as (_gw, api):
        key = await api.tenant("t")
        hook = await register(api, key, receiver.url())
        job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
        await eventually(lambda: _true_if(receiver.attempts == 1))
        _, token = await lease_of(database_url, hook["id"])
        blocker = await db.connect(database_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE webhooks IN SHARE MODE")
            receiver.release.set()

            await eventually(lambda: waits_on_the_table(database_url, "delivered = delivered + 1"))
            task = delivery_task(hook["id"])
            assert task is not None
            task.cancel()
            while cancels == "until_done" and not task.done():
                await asyncio.sleep(0)
                task.cancel()
            # The lease is given up all the same, once the table lets it.
            await eventually(lambda: waits_on_the_table(database_url, "SET lease_owner = NULL"))
            assert await holding(database_url, hook["id"]) is not None
            await tx.rollback()
        finally:
            await blocker.close()

        async def delivered() -> dict[str, Any] | None:
            state = await webhook(api, key, hook["id"])
            return state if state["delivered"] == 1 else None

        await eventually(delivered, timeout=5)
        # given up, then claimed again for the delivery whose recording was cancelled: at least once
        assert (await lease_of(database_url, hook["id"]))[1] == token + 1
        assert {e["job_id"] for e in receiver.delivered} == {job["id"]}


async def test_a_lease_that_ran_out_is_taken_over_and_fences_its_old_holder(
    database_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # The first gateway's POST hangs; its lease is made to run out as if the process had stalled
    # past it. A second gateway takes the endpoint over and delivers; when the first one's POST
    # finally answers, its record of it is refused (the lease token moved on), and it stops.
    receiver.hold = {1}
    settings = gateway_settings(database_url, allow=LOCAL, webhook_timeout_seconds=LONG_LEASE)
    caplog.set_level(logging.INFO, logger="orchestrator.gateway")
    async with gateway_api(settings) as (_first, first):
        key = await first.tenant("t")
        hook = await register(first, key, receiver.url())
        await first.signed(key, "POST", "/v1/jobs", {"payload": {}})
        event = (await first.signed(key, "GET", "/v1/events?wait_ms=5000")).body["events"][0]
        await eventually(lambda: _true_if(receiver.attempts == 1))
        owner, token = await lease_of(database_url, hook["id"])
        assert owner is not None
        async with gateway_api(settings) as (_second, second):
            await fetch(
                database_url,
                "UPDATE webhooks SET lease_until = now() - interval '1 second' WHERE id = $1",
                int(hook["id"]),
            )

            async def delivered() -> dict[str, Any] | None:
                state = await webhook(first, key, hook["id"])
                return state if state["delivered"] == 1 else None

            state = await eventually(delivered, timeout=10)
            assert state["cursor"] == event["id"]
            assert (await lease_counts(second))["taken_over"] == 1
            assert f"webhook {hook['id']}: lease taken over from {owner}" in caplog.text
            assert (await lease_of(database_url, hook["id"]))[1] == token + 1

            receiver.release.set()  # the stalled holder's POST answers now

            async def lost() -> bool:
                return (await lease_counts(first))["lost"] == 1

            await eventually(lost, timeout=10)
            assert f"webhook {hook['id']}: lease {token} lost" in caplog.text
            state = await webhook(first, key, hook["id"])
            assert (state["delivered"], state["cursor"], state["attempts"]) == (1, event["id"], 0)
            # delivered twice (at least once), recorded once, by the lease's holder
            assert [e["id"] for e in receiver.delivered] == [event["id"], event["id"]]
            assert (await lease_counts(first))["taken_over"] == 0


async def test_a_delivery_longer_than_its_lease_renews_it(database_url: str, receiver: Receiver) -> None:
    # Leases of 7 s (a 1 s time limit); 20 events answered in 0.4 s each take longer. The
    # holder renews as it goes, so the other gateway never takes the endpoint over.
    receiver.delay_s = 0.4
    settings = gateway_settings(database_url, allow=LOCAL, webhook_timeout_seconds=1.0)
    async with gateway_api(settings) as (_a, a), gateway_api(settings) as (_b, b):
        key = await a.tenant("t")
        hook = await register(a, key, receiver.url())
        await a.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"n": n}} for n in range(20)]})
        expected = [e["id"] for e in (await a.signed(key, "GET", "/v1/events?wait_ms=5000")).body["events"]]
        assert len(expected) == 20
        untils = set()

        async def all_delivered() -> bool:
            rows = await fetch(database_url, "SELECT lease_until FROM webhooks WHERE id = $1", int(hook["id"]))
            untils.add(rows[0]["lease_until"])
            return len(receiver.delivered) == 20

        await eventually(all_delivered, timeout=20, every=0.2)
        assert [e["id"] for e in receiver.delivered] == expected
        counts = [await lease_counts(api) for api in (a, b)]
        assert sum(c["claimed"] for c in counts) == 1, counts
        assert all(c["taken_over"] == 0 and c["lost"] == 0 for c in counts), counts
        assert len(untils - {None}) >= 3  # claimed, then renewed on the way
        await eventually(lambda: released(database_url, hook["id"]))


async def _true_if(condition: bool) -> bool:
    return condition
