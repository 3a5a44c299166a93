"""Event routes: a tenant's events by cursor (long-poll and Server-Sent Events), and durable
consumers. docs/events.md explains the cursor and its guarantees."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream

import db
from core import Conflict, Gone, InvalidInput, NotFound
from core.wire import MAX_WAIT_MS, Consumer, ConsumerAck, ConsumerCreate, ConsumerList, Event, EventPage
from notifier import withheld_recheck

from ..auth import runtime_of, signed, tenant_of
from ..errors import DB_ERRORS
from ..runtime import Runtime
from . import _openapi, _paths
from ._body import Body

log = logging.getLogger("orchestrator.gateway")

STREAM_BATCH = 500
SSE_RETRY_MS = 1000
KEEP_ALIVE = b": keep-alive\n\n"

_encode = msgspec.json.Encoder().encode


def parse_cursor(value: str, field: str) -> db.Cursor:
    cursor = db.Cursor.parse(value)
    if cursor is None:
        raise InvalidInput(f"{field}: not a cursor (pass back an event's id or a page's next)", field=field)
    return cursor


READ_WITHOUT_CURSOR = "read without a cursor to start there"


def check_read(page: db.EventRead, field: str, retention_seconds: int, remedy: str = READ_WITHOUT_CURSOR) -> None:
    """Refuse a read from a cursor that retention has passed, or one never handed out."""
    if page.unknown:
        raise InvalidInput(f"{field}: {page.start} is not a cursor this server handed out", field=field)
    if page.gone:
        raise Gone(
            f"events after cursor {page.start} were pruned (retention {retention_seconds} s); "
            f"the oldest retained events follow cursor {page.horizon}: {remedy}"
        )


async def read_events(
    rt: Runtime,
    tenant_id: str,
    after: db.Cursor | None,
    limit: int,
    wait_ms: int,
    field: str,
    remedy: str = READ_WITHOUT_CURSOR,
) -> db.EventRead:
    """A page of events after `after`; with `wait_ms`, wait until there is at least one."""
    waiters = rt.notifier.event_waiters
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_ms / 1000
    recheck = withheld_recheck()
    while True:
        # Parked before reading, so an event committed during the read still wakes this request.
        woken = waiters.park(tenant_id) if wait_ms else None
        try:
            async with rt.pool.acquire() as conn:
                page = await db.event_read(conn, tenant_id, after, limit)
            check_read(page, field, rt.settings.event_retention_seconds, remedy)
            remaining = deadline - loop.time()
            if page.events or woken is None or remaining <= 0 or rt.draining.is_set():
                return page
            timeout = min(recheck.next(), remaining) if page.withheld else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout)
        finally:
            if woken is not None:
                waiters.leave(tenant_id, woken)


def _consumer_out(c: db.ConsumerRow) -> Consumer:
    return Consumer(name=c.name, cursor=str(c.cursor), created_at=c.created_at, updated_at=c.updated_at)


def _sse_message(cursor: db.Cursor, event: Event) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (str(cursor).encode(), event.type.value.encode(), _encode(event))


async def _sse(rt: Runtime, tenant_id: str, start: db.Cursor | None, first: db.EventRead) -> AsyncIterator[bytes]:
    waiters = rt.notifier.event_waiters
    keepalive = rt.settings.event_stream_keepalive_seconds
    loop = asyncio.get_running_loop()
    position = start
    page = first
    recheck = withheld_recheck()
    try:
        # The retry field sets the browser's reconnect delay; it also sends the headers at once.
        yield b"retry: %d\n\n" % SSE_RETRY_MS
        last_sent = loop.time()
        while True:
            if page.events:
                yield b"".join(_sse_message(c, e) for c, e in zip(page.cursors, page.events, strict=True))
                last_sent = loop.time()
                position = page.next
                recheck.reset()
                rt.metrics.events_served.add(len(page.events), {"via": "stream"})
                if len(page.events) >= STREAM_BATCH:
                    async with rt.pool.acquire() as conn:
                        page = await db.event_read(conn, tenant_id, position, STREAM_BATCH)
                    continue
            if rt.draining.is_set():
                return
            woken = waiters.park(tenant_id)
            try:
                async with rt.pool.acquire() as conn:
                    page = await db.event_read(conn, tenant_id, position, STREAM_BATCH)
                if page.gone or page.unknown:
                    return  # the client reconnects and is told why
                if page.events:
                    continue
                if page.withheld:
                    recheck_at = loop.time() + recheck.next()
                else:
                    recheck_at = math.inf
                    recheck.reset()
                while not woken.is_set() and loop.time() < recheck_at:
                    if rt.draining.is_set():
                        return  # shutting down: the client reconnects elsewhere or later
                    if loop.time() - last_sent >= keepalive:
                        yield KEEP_ALIVE
                        last_sent = loop.time()
                    timeout = min(last_sent + keepalive, recheck_at) - loop.time()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), max(timeout, 0.001))
            finally:
                waiters.leave(tenant_id, woken)
    except DB_ERRORS as exc:
        log.warning("event stream of %s ended: database unreachable: %r", tenant_id, exc)


class EventsController(Controller):
    path = "/v1/events"
    guards = [signed, _paths.strict_query]
    tags = ["events"]

    @get(
        "/",
        summary="The tenant's events after a cursor, oldest first; with wait_ms, wait for one",
        responses=_openapi.PRUNED,
    )
    async def list_events(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[str | None, QueryParameter(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        wait_ms: Annotated[int, QueryParameter(ge=0, le=MAX_WAIT_MS)] = 0,
    ) -> EventPage:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        cursor = None if after is None else parse_cursor(after, "after")
        page = await read_events(rt, tenant_id, cursor, limit, wait_ms, "after")
        if page.events:
            rt.metrics.events_served.add(len(page.events), {"via": "poll"})
        return EventPage(events=page.events, next=str(page.next))

    @get(
        "/stream",
        summary="The tenant's events as Server-Sent Events, from Last-Event-ID or after, then live",
        media_type="text/event-stream",
        responses=_openapi.PRUNED,
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[str | None, QueryParameter(max_length=64)] = None,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", max_length=64)] = None,
    ) -> Stream:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        # A reconnecting EventSource sends the last id it saw; it wins over the URL's `after`.
        field, raw = ("Last-Event-ID", last_event_id) if last_event_id else ("after", after)
        start = None if raw is None else parse_cursor(raw, field)
        # The first page is read before the response starts, so a bad or pruned cursor is
        # answered with a problem document rather than an empty stream.
        async with rt.pool.acquire() as conn:
            first = await db.event_read(conn, tenant_id, start, STREAM_BATCH)
        check_read(first, field, rt.settings.event_retention_seconds)
        return Stream(
            _sse(rt, tenant_id, start, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class ConsumersController(Controller):
    """Durable consumers: named cursors kept by the server, moved by acknowledging."""

    path = "/v1/consumers"
    guards = [signed, _paths.strict_query]
    tags = ["events"]

    @post(
        "/",
        status_code=201,
        summary="Create a consumer at the oldest retained event or at the latest",
        responses=_openapi.problems({409: "A consumer of this name exists."}),
        dto=Body[ConsumerCreate],
        return_dto=None,
    )
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[ConsumerCreate]) -> Consumer:
        rt = runtime_of(request)
        async with rt.pool.acquire() as conn:
            row = await db.consumer_insert(conn, tenant_of(request), data.name, data.start)
        if row is None:
            raise Conflict(f"consumer {data.name!r} exists")
        return _consumer_out(row)

    @get("/", summary="The tenant's consumers and their positions")
    async def list_consumers(self, request: Request[Any, Any, Any]) -> ConsumerList:
        async with runtime_of(request).pool.acquire() as conn:
            rows = await db.consumer_list(conn, tenant_of(request))
        return ConsumerList(consumers=[_consumer_out(r) for r in rows])

    @get("/{name:str}", summary="A consumer and its position")
    async def get_consumer(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Consumer:
        async with runtime_of(request).pool.acquire() as conn:
            row = await db.consumer_get(conn, tenant_of(request), _paths.name(name, "consumer"))
        if row is None:
            raise NotFound(f"no consumer {name!r}")
        return _consumer_out(row)

    @get(
        "/{name:str}/events",
        summary="Events after the consumer's position (the position does not move)",
        responses=_openapi.problems(
            {410: "The consumer's position lies before the oldest retained event: delete it and create it again."}
        ),
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        wait_ms: Annotated[int, QueryParameter(ge=0, le=MAX_WAIT_MS)] = 0,
    ) -> EventPage:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            row = await db.consumer_get(conn, tenant_id, _paths.name(name, "consumer"))
        if row is None:
            raise NotFound(f"no consumer {name!r}")
        remedy = "delete the consumer and create it again to start there"
        page = await read_events(rt, tenant_id, row.cursor, limit, wait_ms, "cursor", remedy)
        if page.events:
            rt.metrics.events_served.add(len(page.events), {"via": "consumer"})
        return EventPage(events=page.events, next=str(page.next))

    @post(
        "/{name:str}/ack",
        status_code=200,
        summary="Move the consumer's position forward to a cursor",
        dto=Body[ConsumerAck],
        return_dto=None,
    )
    async def ack(self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[ConsumerAck]) -> Consumer:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        name = _paths.name(name, "consumer")
        cursor = parse_cursor(data.cursor, "cursor")
        async with rt.pool.acquire() as conn:
            moved = await db.consumer_ack(conn, tenant_id, name, cursor)
            current = moved or await db.consumer_get(conn, tenant_id, name)
        if current is None:
            raise NotFound(f"no consumer {name!r}")
        if moved is None and cursor > current.cursor:
            raise InvalidInput(
                f"cursor: {cursor} is not the id of an event this consumer can have read", field="cursor"
            )
        return _consumer_out(current)

    @delete("/{name:str}", status_code=204, summary="Delete a consumer")
    async def delete_consumer(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[None]:
        async with runtime_of(request).pool.acquire() as conn:
            if not await db.consumer_delete(conn, tenant_of(request), _paths.name(name, "consumer")):
                raise NotFound(f"no consumer {name!r}")
        return Response(None, status_code=204)
