"""Event commands: reading a tenant's events by cursor, retention, consumers and webhooks.

A cursor is an event's (xid, id): the id of the transaction that wrote it and its row id.
Reads return only events of transactions older than every one still running, in (xid, id)
order, so an event that commits later always sorts after a cursor already handed out
(docs/events.md has the argument).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg
import msgspec

from core import EventType
from core.wire import Event

from ._queries import one, sql
from ._types import Conn

_READ = sql("event_read")
_PRUNE_LOCK = sql("event_prune_lock")
_PRUNE = sql("event_prune")
_CONSUMER_INSERT = sql("consumer_insert")
_CONSUMER_GET = sql("consumer_get")
_CONSUMER_LIST = sql("consumer_list")
_CONSUMER_DELETE = sql("consumer_delete")
_CONSUMER_ACK = sql("consumer_ack")
_WEBHOOK_INSERT = sql("webhook_insert")
_WEBHOOK_GET = sql("webhook_get")
_WEBHOOK_LIST = sql("webhook_list")
_WEBHOOK_DELETE = sql("webhook_delete")
_WEBHOOK_RESUME = sql("webhook_resume")
_WEBHOOK_ACTIVITY = sql("webhook_activity")
_WEBHOOK_CLAIM = sql("webhook_claim")
_WEBHOOK_EXTEND = sql("webhook_extend")
_WEBHOOK_RELEASE = sql("webhook_release")
_WEBHOOK_LEASE = sql("webhook_lease")
_WEBHOOK_DELIVERED = sql("webhook_delivered")
_WEBHOOK_ADVANCE = sql("webhook_advance")
_WEBHOOK_FAILED = sql("webhook_failed")
_CONSUMER_LAGS = sql("consumer_lags")
_WEBHOOK_BACKLOGS = sql("webhook_backlogs")

_CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})$")
_MAX_XID = 2**64 - 1
_MAX_ID = 2**63 - 1


class Cursor(NamedTuple):
    """A position in a tenant's events; tuples compare in the order events are read."""

    xid: int
    id: int

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `text` encodes, or None when it is not one."""
        m = _CURSOR.fullmatch(text)
        if m is None:
            return None
        xid, id_ = int(m.group(1)), int(m.group(2))
        if xid > _MAX_XID or id_ > _MAX_ID:
            return None
        return cls(xid, id_)


class EventRead(msgspec.Struct, frozen=True, kw_only=True):
    events: list[Event]
    cursors: list[Cursor]  # of the events, in the same order
    start: Cursor  # the cursor read after: the one given, or the tenant's retention horizon
    horizon: Cursor  # every event at or before it counts as pruned
    gone: bool  # events after the given cursor were pruned
    unknown: bool  # the given cursor lies past every transaction id assigned so far
    withheld: bool  # events past the start have committed but wait for an older transaction

    @property
    def next(self) -> Cursor:
        return self.cursors[-1] if self.cursors else self.start


async def event_read(conn: Conn, tenant_id: str, after: Cursor | None, limit: int) -> EventRead:
    """Up to `limit` of the tenant's events after `after` (None: from the oldest retained)."""
    rows = await conn.fetch(
        _READ, tenant_id, None if after is None else after.xid, None if after is None else after.id, limit
    )
    head = rows[0]
    events: list[Event] = []
    cursors: list[Cursor] = []
    for r in rows:
        if r["e_id"] is None:
            continue
        cursor = Cursor(r["e_xid"], r["e_id"])
        cursors.append(cursor)
        events.append(
            Event(
                id=str(cursor),
                type=EventType(r["e_type"]),
                job_id=str(r["e_job_id"]),
                tenant_id=tenant_id,
                queue=r["e_queue"],
                at=r["e_at"],
                data=r["e_data"],
            )
        )
    return EventRead(
        events=events,
        cursors=cursors,
        start=Cursor(head["start_xid"], head["start_id"]),
        horizon=Cursor(head["horizon_xid"], head["horizon_id"]),
        gone=head["gone"],
        unknown=head["unknown"],
        withheld=head["withheld"],
    )


async def event_prune_lock(conn: Conn) -> bool:
    """Take the cluster-wide pruning lock for the caller's transaction; False if another holds it."""
    return bool(await conn.fetchval(_PRUNE_LOCK))


async def event_prune(conn: Conn, older_than_seconds: int, limit: int) -> int:
    """Delete up to `limit` events older than the retention; returns how many went."""
    n: int = await conn.fetchval(_PRUNE, older_than_seconds, limit)
    return n


# --- consumers ---------------------------------------------------------------------------


class ConsumerRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    cursor: Cursor
    created_at: datetime
    updated_at: datetime


def _consumer(r: asyncpg.Record) -> ConsumerRow:
    return ConsumerRow(
        name=r["name"],
        cursor=Cursor(r["cursor_xid"], r["cursor_id"]),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


async def consumer_insert(conn: Conn, tenant_id: str, name: str, start: str) -> ConsumerRow | None:
    """A new consumer at `start` ('oldest' or 'latest'); None when the name is taken."""
    row = await conn.fetchrow(_CONSUMER_INSERT, tenant_id, name, start)
    return None if row is None else _consumer(row)


async def consumer_get(conn: Conn, tenant_id: str, name: str) -> ConsumerRow | None:
    row = await conn.fetchrow(_CONSUMER_GET, tenant_id, name)
    return None if row is None else _consumer(row)


async def consumer_list(conn: Conn, tenant_id: str) -> list[ConsumerRow]:
    return [_consumer(r) for r in await conn.fetch(_CONSUMER_LIST, tenant_id)]


async def consumer_delete(conn: Conn, tenant_id: str, name: str) -> bool:
    return await conn.fetchval(_CONSUMER_DELETE, tenant_id, name) is not None


async def consumer_ack(conn: Conn, tenant_id: str, name: str, cursor: Cursor) -> ConsumerRow | None:
    """Move the consumer forward to `cursor`; None when nothing moved (see the query)."""
    row = await conn.fetchrow(_CONSUMER_ACK, tenant_id, name, cursor.xid, cursor.id)
    return None if row is None else _consumer(row)


# --- webhooks ----------------------------------------------------------------------------


class WebhookRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: str
    url: str
    event_types: list[str]
    secret: str
    state: str
    cursor: Cursor
    attempts: int
    next_attempt_at: datetime
    delivered: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    last_delivered_at: datetime | None
    created_at: datetime


def _webhook(r: asyncpg.Record) -> WebhookRow:
    return WebhookRow(
        id=r["id"],
        tenant_id=r["tenant_id"],
        url=r["url"],
        event_types=list(r["event_types"]),
        secret=r["secret"],
        state=r["state"],
        cursor=Cursor(r["cursor_xid"], r["cursor_id"]),
        attempts=r["attempts"],
        next_attempt_at=r["next_attempt_at"],
        delivered=r["delivered"],
        last_status=r["last_status"],
        last_error=r["last_error"],
        last_attempt_at=r["last_attempt_at"],
        last_delivered_at=r["last_delivered_at"],
        created_at=r["created_at"],
    )


async def webhook_insert(conn: Conn, tenant_id: str, url: str, event_types: Sequence[str], secret: str) -> WebhookRow:
    row = one(await conn.fetchrow(_WEBHOOK_INSERT, tenant_id, url, list(event_types), secret))
    return _webhook(row)


async def webhook_get(conn: Conn, webhook_id: int, tenant_id: str) -> WebhookRow | None:
    row = await conn.fetchrow(_WEBHOOK_GET, webhook_id, tenant_id)
    return None if row is None else _webhook(row)


async def webhook_list(conn: Conn, tenant_id: str) -> list[WebhookRow]:
    return [_webhook(r) for r in await conn.fetch(_WEBHOOK_LIST, tenant_id)]


async def webhook_delete(conn: Conn, webhook_id: int, tenant_id: str) -> bool:
    return await conn.fetchval(_WEBHOOK_DELETE, webhook_id, tenant_id) is not None


async def webhook_resume(conn: Conn, webhook_id: int, tenant_id: str) -> WebhookRow | None:
    """Make the endpoint active and due now, its failure count reset."""
    row = await conn.fetchrow(_WEBHOOK_RESUME, webhook_id, tenant_id)
    return None if row is None else _webhook(row)


class WebhookActivity(msgspec.Struct, frozen=True, kw_only=True):
    active: bool  # some endpoint is active
    withheld: bool  # an active endpoint has committed events ahead waiting for an older transaction
    next_retry_in: float | None  # seconds until the earliest endpoint in backoff is due
    next_expiry_in: float | None  # seconds until the earliest lease of another process runs out


async def webhook_activity(conn: Conn, owner: str) -> WebhookActivity:
    """How the endpoints stand, as the publisher of the process `owner` plans its next round."""
    row = one(await conn.fetchrow(_WEBHOOK_ACTIVITY, owner))
    return WebhookActivity(
        active=row["active"],
        withheld=row["withheld"],
        next_retry_in=row["next_retry_in"],
        next_expiry_in=row["next_expiry_in"],
    )


class WebhookClaim(msgspec.Struct, frozen=True, kw_only=True):
    hook: WebhookRow  # as stored once leased
    token: int  # the lease's fencing token, named by every write of its holder
    lease_until: datetime
    previous_owner: str | None  # the last holder, when it never released its lease
    previous_until: datetime | None  # when that lease ran out


async def webhook_claim(
    conn: Conn, owner: str, limit: int, lease_seconds: float, exclude: Sequence[int]
) -> list[WebhookClaim]:
    """Lease up to `limit` due endpoints with events to deliver to `owner` (not the ids in
    `exclude`); one short statement, nothing held past it."""
    rows = await conn.fetch(_WEBHOOK_CLAIM, limit, owner, lease_seconds, list(exclude))
    return [
        WebhookClaim(
            hook=_webhook(r),
            token=r["lease_token"],
            lease_until=r["lease_until"],
            previous_owner=r["previous_owner"],
            previous_until=r["previous_until"],
        )
        for r in rows
    ]


async def webhook_extend(conn: Conn, webhook_id: int, token: int, lease_seconds: float) -> bool:
    """Keep the lease `lease_seconds` from now; False when it is not the caller's any more."""
    return await conn.fetchval(_WEBHOOK_EXTEND, webhook_id, token, lease_seconds) is not None


async def webhook_release(conn: Conn, webhook_id: int, token: int) -> bool:
    """Give the lease up; False when it was not the caller's any more."""
    return await conn.fetchval(_WEBHOOK_RELEASE, webhook_id, token) is not None


class WebhookLease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str | None
    until: datetime | None
    token: int


async def webhook_lease(conn: Conn, webhook_id: int) -> WebhookLease | None:
    """The endpoint's lease as stored now; None when the endpoint is gone."""
    row = await conn.fetchrow(_WEBHOOK_LEASE, webhook_id)
    return (
        None
        if row is None
        else WebhookLease(owner=row["lease_owner"], until=row["lease_until"], token=row["lease_token"])
    )


async def webhook_delivered(conn: Conn, webhook_id: int, token: int, cursor: Cursor, status: int) -> bool:
    """Record a delivery and move the cursor; False (nothing changed) unless lease `token` holds."""
    return await conn.fetchval(_WEBHOOK_DELIVERED, webhook_id, cursor.xid, cursor.id, status, token) is not None


async def webhook_advance(conn: Conn, webhook_id: int, token: int, cursor: Cursor) -> bool:
    """Move the cursor past events the endpoint does not subscribe to; fenced as `webhook_delivered`."""
    return await conn.fetchval(_WEBHOOK_ADVANCE, webhook_id, cursor.xid, cursor.id, token) is not None


async def webhook_failed(
    conn: Conn,
    webhook_id: int,
    token: int,
    cursor: Cursor,
    *,
    status: int | None,
    error: str,
    base_ms: int,
    cap_ms: int,
    jitter: float,
    max_attempts: int,
) -> tuple[str, int] | None:
    """Record a failed attempt; returns the endpoint's (state, attempts), None when lease `token`
    no longer holds (taken over, or the endpoint is gone) and nothing changed."""
    row = await conn.fetchrow(
        _WEBHOOK_FAILED, webhook_id, cursor.xid, cursor.id, status, error, base_ms, cap_ms, jitter, max_attempts, token
    )
    return None if row is None else (row["state"], row["attempts"])


# --- backlogs, for the gauges --------------------------------------------------------------


class Backlog(msgspec.Struct, frozen=True):
    tenant_id: str
    name: str  # the consumer's name, or the webhook's id
    events: int  # events past its position, counted up to the cap given


async def consumer_lags(conn: Conn, cap: int = 100_000) -> list[Backlog]:
    """How many events each durable consumer has not acknowledged (at most `cap`)."""
    return [Backlog(r["tenant_id"], r["name"], r["n"]) for r in await conn.fetch(_CONSUMER_LAGS, cap)]


async def webhook_backlogs(conn: Conn, cap: int = 100_000) -> list[Backlog]:
    """How many events each webhook endpoint has yet to receive (at most `cap`)."""
    return [Backlog(r["tenant_id"], r["name"], r["n"]) for r in await conn.fetch(_WEBHOOK_BACKLOGS, cap)]
