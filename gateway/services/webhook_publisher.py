"""The webhook publisher: every gateway process runs one, delivering events to tenants' endpoints.

An endpoint is delivered by one process at a time, in order, under a lease kept in its row: one
short UPDATE claims due endpoints that have events to deliver, and the holder renews the lease
while it delivers, moves the cursor only while the lease is still its own (each write names the
lease's token), and gives it up when the delivery ends. A process that dies leaves a lease that
runs out, and another takes the endpoint over. Nothing is held in a database session between
statements, so the pool may go through a transaction-mode pooler such as PgBouncer.

Tenants choose the URLs, so deliveries never reach internal addresses (loopback, private,
link-local, ...) unless the operator allows them: the address is checked after resolution, on
the very socket that connects, so a name that resolves elsewhere at delivery time is refused too.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import random
import re
import secrets
import socket
import ssl
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

import db
from core import Settings
from core.signing import (
    WEBHOOK_EVENT_ID_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    webhook_signature,
)
from core.wire import Event
from notifier import withheld_recheck

from ..errors import DB_ERRORS
from ..runtime import Runtime

log = logging.getLogger("orchestrator.gateway")

DELIVERY_BATCH = 100
# An endpoint whose delivery ran into an error here is left alone this long.
REST_SECONDS = 1.0
# Notifications come with every committed event; rounds are at least this far apart.
MIN_ROUND_SECONDS = 0.02
MAX_ERROR_CHARS = 500
USER_AGENT = "job-orchestrator-webhooks/1"
# What a lease leaves beyond one POST for the statements around it and a stalled event loop.
LEASE_MARGIN_SECONDS = 5.0
# Giving a lease up is a courtesy (it runs out by itself): it gets this long.
RELEASE_TIMEOUT_SECONDS = 5.0
# How long registration waits for a name to resolve before leaving the check to delivery.
REGISTRATION_RESOLVE_SECONDS = 5.0

_encode = msgspec.json.Encoder().encode

# The publisher of each runtime, so routes that change an endpoint can wake it.
_publishers: weakref.WeakKeyDictionary[Runtime, WebhookPublisher] = weakref.WeakKeyDictionary()


def lease_seconds(settings: Settings) -> float:
    """How long a claim or a renewal holds an endpoint: two POSTs' time limit and the margin.

    One POST lasts at most ORCH_WEBHOOK_TIMEOUT_SECONDS (T). The holder renews before any POST
    when less than T and the margin are left, so a live holder keeps its lease through the POST
    and the write that records it; leasing for 2T and the margin makes that renewal one extra
    statement every T seconds or more, not one per event. A holder that dies holds the endpoint
    up to this long (25 s with the default T of 10 s)."""
    return 2 * settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS


def _owner_name() -> str:
    """This process in lease_owner, for people reading the table and the logs; the token fences."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def kick(rt: Runtime) -> None:
    """Have this process's publisher look for work now (other processes find it by their poll)."""
    publisher = _publishers.get(rt)
    if publisher is not None:
        publisher.kick()


class Attempt(msgspec.Struct, frozen=True):
    ok: bool
    status: int | None
    error: str | None


# --- where deliveries may go -----------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def is_host_name(host: str) -> bool:
    """Whether `host` is spelled as a DNS name (ASCII labels: IDNA-encode first)."""
    return bool(_HOST_NAME.match(host.lower().rstrip(".")))


class RefusedDestination(OSError):
    """The address is one webhooks may not reach."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which is where it leads."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_class(ip: IPAddress) -> str | None:
    """Why webhooks may not reach `ip` by default, in a word or two; None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return address_class(embedded)
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL, "unique-local"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _SITE_LOCAL, "site-local"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    )
    return next((name for refused, name in checks if refused), None)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


class DestinationPolicy:
    """Which addresses deliveries may connect to: public ones, and what the operator allows
    (`ORCH_WEBHOOK_ALLOW_HOSTS`: host names, IP addresses, CIDR networks)."""

    def __init__(self, allow: Iterable[str]) -> None:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allow:
            entry = raw.strip().lower()
            ip = _parse_ip(entry)
            if ip is not None:
                networks.append(ipaddress.ip_network(ip))
                if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
                    networks.append(ipaddress.ip_network(embedded))
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                except ValueError:
                    pass
            elif is_host_name(entry):
                names.add(entry.rstrip("."))
                continue
            # Fail closed: an entry that means nothing allows nothing.
            log.warning("ORCH_WEBHOOK_ALLOW_HOSTS: ignoring %r, not a host name, IP address or CIDR network", raw)
        self.names = frozenset(names)
        self.networks = tuple(networks)

    def allows_name(self, host: str) -> bool:
        """Whether the operator allows this host name whatever it resolves to."""
        return host.lower().rstrip(".") in self.names

    def refusal(self, ip: IPAddress) -> str | None:
        """Why deliveries may not connect to `ip` (its class of address), or None if they may."""
        kind = address_class(ip)
        if kind is None:
            return None
        # Allowing 127.0.0.1 allows ::ffff:127.0.0.1 too: both reach the same place.
        same = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
            same.append(embedded)
        if any(a.version == n.version and a in n for a in same for n in self.networks):
            return None
        return kind


@functools.lru_cache(maxsize=16)
def _policy(allow: tuple[str, ...]) -> DestinationPolicy:
    return DestinationPolicy(allow)


def destination_policy(settings: Settings) -> DestinationPolicy:
    return _policy(settings.webhook_allow_hosts)


async def registration_refusal(host: str, port: int, policy: DestinationPolicy) -> str | None:
    """Why an endpoint on `host` cannot be registered, or None. A name that does not resolve (yet)
    passes: where it leads is checked again at every delivery."""
    if policy.allows_name(host):
        return None
    ip = _parse_ip(host)
    if ip is not None:
        kind = policy.refusal(ip)
        return None if kind is None else f"{host} is a {kind} address"
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(REGISTRATION_RESOLVE_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return None
    kinds = {policy.refusal(ip) if (ip := _parse_ip(str(info[4][0]))) else "unknown" for info in infos}
    if not infos or None in kinds:
        return None
    return f"{host} resolves only to refused addresses ({', '.join(sorted(k for k in kinds if k))})"


class CheckedResolver(AbstractResolver):
    """The system resolver, keeping only the addresses the policy allows: the connector connects
    to what this returns, so the address checked is the address used."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if (ip := _parse_ip(r["host"])) is not None and self._policy.refusal(ip) is None]
        if not allowed:
            raise RefusedDestination(f"{host} resolves only to refused addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _checked_socket(policy: DestinationPolicy) -> aiohttp.SocketFactoryType:
    """A socket factory refusing refused addresses: the last check, on the address about to be
    connected (literal IPs never reach the resolver)."""

    def create(addr_info: aiohttp.AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        ip = _parse_ip(str(address[0]))
        if ip is None or policy.refusal(ip) is not None:
            raise RefusedDestination(errno.EACCES, "refused destination")
        return socket.socket(family, type_, proto)

    return create


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def failure_class(exc: BaseException) -> str:
    """What went wrong with an attempt, in a few words of our own: the error's text can carry
    what the remote side (or an internal one) said, and tenants read `last_error`."""
    chain = _causes(exc)

    def has(*kinds: type[BaseException]) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    if has(RefusedDestination):
        return "refused destination"
    if has(TimeoutError):
        return "timeout"
    if has(aiohttp.ClientConnectorDNSError, socket.gaierror):
        return "DNS failure"
    if has(aiohttp.ClientSSLError, ssl.SSLError):
        return "TLS error"
    if has(ConnectionRefusedError):
        return "connection refused"
    if has(aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError, BrokenPipeError):
        return "connection closed"
    if has(aiohttp.InvalidURL, ValueError):
        return "invalid URL"
    return "connection error"


@dataclass
class _Lease:
    """An endpoint this process holds."""

    webhook_id: int
    token: int
    expires: float  # loop time; never later than the lease_until stored


class LeaseLost(Exception):
    """The lease is not this process's any more: taken over, or its endpoint deleted."""


class WebhookPublisher:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._owner = _owner_name()
        self._lease_seconds = lease_seconds(rt.settings)
        self._kick = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._resting_until: dict[int, float] = {}  # endpoints whose delivery ran into an error here
        self._releases: set[asyncio.Task[None]] = set()
        self._active = True  # whether the last round saw an active endpoint
        self._recheck = withheld_recheck()
        self._policy = destination_policy(rt.settings)
        self._session: aiohttp.ClientSession | None = None
        # For hosts the operator allows by name, wherever they resolve; created if there are any.
        self._trusted: aiohttp.ClientSession | None = None

    def kick(self) -> None:
        """Look for work now rather than at the next notification."""
        self._kick.set()

    def _new_session(self, checked: bool) -> aiohttp.ClientSession:
        limit = max(1, self._rt.settings.webhook_concurrency) * 2
        connector = (
            aiohttp.TCPConnector(
                limit=limit, resolver=CheckedResolver(self._policy), socket_factory=_checked_socket(self._policy)
            )
            if checked
            else aiohttp.TCPConnector(limit=limit)
        )
        return aiohttp.ClientSession(
            connector=connector,
            # Receivers belong to different tenants: no cookies, no proxy settings from the environment.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._session = self._new_session(checked=True)
        self._trusted = self._new_session(checked=False) if self._policy.names else None
        _publishers[self._rt] = self
        log.info("webhook publisher %s: leases of %.0f s", self._owner, self._lease_seconds)
        try:
            await self._loop()
        finally:
            _publishers.pop(self._rt, None)
            tasks = list(self._inflight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Leases given up on the way out let another gateway go on at once (a rolling restart).
            if self._releases:
                await asyncio.wait(list(self._releases), timeout=RELEASE_TIMEOUT_SECONDS)
            await self._session.close()
            if self._trusted is not None:
                await self._trusted.close()

    async def _loop(self) -> None:
        waiters = self._rt.notifier.event_waiters
        while True:
            self._kick.clear()
            # With no active endpoint there is nothing to wake for but a kick or the backstop poll.
            woken = waiters.park(None) if self._active else None
            try:
                try:
                    wait = await self._round()
                except DB_ERRORS as exc:
                    log.warning("webhook publisher round failed: %r", exc)
                    wait = self._rt.settings.webhook_poll_seconds
                waits = [asyncio.ensure_future(self._kick.wait())]
                if woken is not None:
                    waits.append(asyncio.ensure_future(woken.wait()))
                try:
                    await asyncio.wait(waits, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            finally:
                if woken is not None:
                    waiters.leave(None, woken)
            await asyncio.sleep(MIN_ROUND_SECONDS)

    async def _round(self) -> float:
        """Claim due endpoints and start their deliveries; returns how long to wait before the next round."""
        settings = self._rt.settings
        metrics = self._rt.metrics
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._resting_until = {k: t for k, t in self._resting_until.items() if t > now}
        free = settings.webhook_concurrency - len(self._inflight)
        claims: list[db.WebhookClaim] = []
        async with self._rt.pool.acquire() as conn:
            activity = await db.webhook_activity(conn, self._owner)
            # Taken before the claim is sent, the lease's end as seen here is never too late.
            claimed_at = loop.time()
            if free > 0:
                exclude = [*self._inflight, *self._resting_until]
                claims = await db.webhook_claim(conn, self._owner, free, self._lease_seconds, exclude)
        for claim in claims:
            webhook_id = claim.hook.id
            metrics.webhook_leases.add(1, {"outcome": "claimed"})
            if claim.previous_until is not None:
                metrics.webhook_leases.add(1, {"outcome": "taken_over"})
                log.warning(
                    "webhook %d: lease taken over from %s, whose lease ran out at %s without being given up",
                    webhook_id,
                    claim.previous_owner,
                    claim.previous_until.isoformat(),
                )
            lease = _Lease(webhook_id, claim.token, claimed_at + self._lease_seconds)
            task = asyncio.create_task(self._deliver(claim.hook, lease), name=f"webhook-{webhook_id}")
            self._inflight[webhook_id] = task
        self._active = activity.active
        wait = settings.webhook_poll_seconds
        for soon in (activity.next_retry_in, activity.next_expiry_in):
            if soon is not None:
                wait = min(wait, soon)
        if self._resting_until:
            wait = min(wait, min(self._resting_until.values()) - now)
        if activity.withheld and not claims:
            wait = min(wait, self._recheck.next())
        else:
            self._recheck.reset()
        return wait

    async def _deliver(self, hook: db.WebhookRow, lease: _Lease) -> None:
        loop = asyncio.get_running_loop()
        held = True
        try:
            await self._deliver_leased(hook, lease)
        except LeaseLost:
            held = False
        except DB_ERRORS as exc:
            log.warning("webhook %d: database unreachable: %r", hook.id, exc)
            self._resting_until[hook.id] = loop.time() + REST_SECONDS
        except Exception:
            # The publisher outlives whatever one endpoint runs into, and leaves that one be a while.
            log.exception("webhook %d: delivery failed", hook.id)
            self._resting_until[hook.id] = loop.time() + REST_SECONDS
        finally:
            try:
                if held:
                    # Shielded: a cancelled delivery still gives its lease up, in the background.
                    release = asyncio.create_task(self._release(lease), name=f"webhook-{hook.id}-release")
                    self._releases.add(release)
                    release.add_done_callback(self._releases.discard)
                    await asyncio.shield(release)
            finally:
                self._inflight.pop(hook.id, None)
                self._kick.set()

    async def _release(self, lease: _Lease) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_SECONDS), self._rt.pool.acquire() as conn:
                await db.webhook_release(conn, lease.webhook_id, lease.token)
        except Exception as exc:
            log.warning(
                "webhook %d: could not give its lease up, it runs out by itself within %.0f s: %r",
                lease.webhook_id,
                self._lease_seconds,
                exc,
            )
        finally:
            self._kick.set()

    async def _lost(self, lease: _Lease) -> LeaseLost:
        """The lease was found gone: say to whom, and stop delivering."""
        async with self._rt.pool.acquire() as conn:
            now = await db.webhook_lease(conn, lease.webhook_id)
        if now is None:
            log.info("webhook %d: deleted while it was being delivered", lease.webhook_id)
            return LeaseLost("deleted")
        self._rt.metrics.webhook_leases.add(1, {"outcome": "lost"})
        log.warning(
            "webhook %d: lease %d lost, it ran out and the endpoint is under lease %d now (%s, until %s); "
            "this delivery stops and the holder goes on from the stored cursor",
            lease.webhook_id,
            lease.token,
            now.token,
            now.owner or "given up since",
            now.until.isoformat() if now.until is not None else "-",
        )
        return LeaseLost("taken over")

    async def _renew(self, lease: _Lease) -> None:
        """Keep the lease through the next POST and the write that records it."""
        loop = asyncio.get_running_loop()
        if lease.expires - loop.time() >= self._rt.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS:
            return
        renewed_at = loop.time()
        async with self._rt.pool.acquire() as conn:
            held = await db.webhook_extend(conn, lease.webhook_id, lease.token, self._lease_seconds)
        if not held:
            raise await self._lost(lease)
        lease.expires = renewed_at + self._lease_seconds

    async def _deliver_leased(self, hook: db.WebhookRow, lease: _Lease) -> None:
        """Deliver the endpoint's next events in order until one fails or the batch is done."""
        settings = self._rt.settings
        metrics = self._rt.metrics
        pool = self._rt.pool
        webhook_id = hook.id
        async with pool.acquire() as conn:
            page = await db.event_read(conn, hook.tenant_id, hook.cursor, DELIVERY_BATCH)
            if page.gone:
                log.warning("webhook %d: events after %s were pruned before delivery", webhook_id, hook.cursor)
                metrics.webhook_deliveries.add(1, {"outcome": "pruned"})
                page = await db.event_read(conn, hook.tenant_id, None, DELIVERY_BATCH)
        stored = hook.cursor
        position = page.start
        for cursor, event in zip(page.cursors, page.events, strict=True):
            if hook.event_types and event.type.value not in hook.event_types:
                position = cursor
                continue
            await self._renew(lease)
            attempt = await self._post(hook, event)
            if attempt.ok and attempt.status is not None:
                async with pool.acquire() as conn:
                    recorded = await db.webhook_delivered(conn, webhook_id, lease.token, cursor, attempt.status)
                if not recorded:
                    # Delivered, but the new holder starts from the stored cursor: at least once.
                    raise await self._lost(lease)
                metrics.webhook_deliveries.add(1, {"outcome": "delivered"})
                stored = position = cursor
                continue
            async with pool.acquire() as conn:
                outcome = await db.webhook_failed(
                    conn,
                    webhook_id,
                    lease.token,
                    position,
                    status=attempt.status,
                    error=(attempt.error or "failed")[:MAX_ERROR_CHARS],
                    base_ms=settings.webhook_retry_base_ms,
                    cap_ms=settings.webhook_retry_cap_ms,
                    # Half the ceiling at least, so successive waits keep growing.
                    jitter=0.5 + random.random() / 2,
                    max_attempts=settings.webhook_max_attempts,
                )
            if outcome is None:
                raise await self._lost(lease)
            state, attempts = outcome
            metrics.webhook_deliveries.add(1, {"outcome": "parked" if state == "parked" else "failed"})
            if state == "parked":
                log.warning("webhook %d parked after %d failed attempts: %s", webhook_id, attempts, attempt.error)
            return
        if position != stored:
            async with pool.acquire() as conn:
                if not await db.webhook_advance(conn, webhook_id, lease.token, position):
                    raise await self._lost(lease)

    async def _post(self, hook: db.WebhookRow, event: Event) -> Attempt:
        if self._session is None:
            raise RuntimeError("the webhook publisher is not running")
        try:
            # Parsed as the client parses it, so the host judged is the host connected to.
            url = URL(hook.url)
        except ValueError:
            return Attempt(False, None, "invalid URL")
        trusted = self._trusted is not None and url.raw_host is not None and self._policy.allows_name(url.raw_host)
        session = self._trusted if trusted and self._trusted is not None else self._session
        timeout = self._rt.settings.webhook_timeout_seconds
        body = _encode(event)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_ID_HEADER: str(hook.id),
            WEBHOOK_EVENT_ID_HEADER: event.id,
            WEBHOOK_TIMESTAMP_HEADER: timestamp,
            WEBHOOK_SIGNATURE_HEADER: webhook_signature(hook.secret, timestamp, body),
        }
        t0 = time.perf_counter()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if 200 <= resp.status < 300:
                    return Attempt(True, resp.status, None)
                # The body is not read: whatever the receiver says stays with it.
                return Attempt(False, resp.status, f"HTTP {resp.status}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # TimeoutError is an OSError.
            return Attempt(False, None, failure_class(exc))
        finally:
            self._rt.metrics.webhook_duration.record(time.perf_counter() - t0)


async def run_webhook_publisher(rt: Runtime) -> None:
    """The webhook publisher of this gateway process, until cancelled."""
    await WebhookPublisher(rt).run()
