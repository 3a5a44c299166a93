"""Following a tenant's events: long-poll or Server-Sent Events with automatic resume, durable
consumers, webhook endpoints, and checking the signature of a webhook delivery."""

from __future__ import annotations

import asyncio
import builtins
import hmac
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Literal, Self, TypeVar

import aiohttp
import msgspec
from yarl import URL

from core.numbers import parse_uint
from core.signing import sign_headers, webhook_signature
from core.wire import MAX_WAIT_MS, Consumer, Event, EventPage, Webhook

from ._backoff import retry_delay_s
from ._errors import ApiError, SdkError, TransportError, is_transient
from ._http import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S, Transport, _error
from ._resources import Consumers, Webhooks

T = TypeVar("T")

_page = msgspec.json.Decoder(EventPage)
_event = msgspec.json.Decoder(Event)

# The server sends a keep-alive comment every 15 s by default; a stream silent for longer than
# this is taken for dead and reopened.
SSE_IDLE_TIMEOUT_S = 45.0

Mode = Literal["poll", "sse"]


def verify_webhook(
    secret: str,
    timestamp: str,
    body: bytes | str,
    signature: str,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when `signature` (the X-Orch-Signature header) is the gateway's signature of this
    body and timestamp (X-Orch-Timestamp), and the timestamp is within `tolerance_s` of now.

    Pass the body exactly as received, before any JSON parsing.
    """
    sent_at = parse_uint(timestamp)
    if sent_at is None:
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = webhook_signature(secret, timestamp, raw)
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


class _SseMessage(msgspec.Struct):
    id: str | None
    event: str | None
    data: str


async def _sse_messages(content: aiohttp.StreamReader) -> AsyncIterator[_SseMessage]:
    """The messages of a text/event-stream body, as the HTML standard parses them."""
    last_id: str | None = None
    event_type: str | None = None
    data: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
        if not line:
            if data:
                yield _SseMessage(last_id, event_type, "\n".join(data))
            data, event_type = [], None
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
        elif field == "event":
            event_type = value


class EventsClient:
    """Reads the events of the tenant that owns `api_key`."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        sse_idle_timeout_s: float = SSE_IDLE_TIMEOUT_S,
    ) -> None:
        self._http = Transport(url, api_key, timeout=timeout)
        self._sse_idle_timeout_s = sse_idle_timeout_s
        self.last_cursor: str | None = None  # the id of the last event `iter` handed out
        self._consumers = Consumers(self._http)
        self._webhooks = Webhooks(self._http)

    async def read(self, after: str | None = None, *, limit: int = 100, wait_ms: int = 0) -> EventPage:
        """One page of events after `after` (None: from the oldest retained event); with
        `wait_ms`, answered as soon as there is one. Pass `next` back as `after`."""
        query = {"after": after, "limit": limit, "wait_ms": wait_ms or None}
        return await self._http.request(
            "GET", "/v1/events", _page, query=query, timeout=wait_ms / 1000 + self._http.timeout
        )

    async def iter(
        self,
        after: str | None = None,
        *,
        mode: Mode = "poll",
        limit: int = 100,
        wait_ms: int = 30_000,
    ) -> AsyncGenerator[Event, None]:
        """Every event after `after`, in order, waiting for new ones without end.

        `mode` is "poll" (long-polling GET /v1/events) or "sse" (one Server-Sent Events stream,
        reopened from the last event seen whenever it breaks). Transient errors — the gateway
        unreachable or restarting, 503 — are retried with backoff; others (such as `Gone` for a
        pruned cursor) are raised. `last_cursor` holds the position to resume from later.
        """
        if mode not in ("poll", "sse"):
            raise ValueError(f"mode is 'poll' or 'sse', not {mode!r}")
        self.last_cursor = after
        events = self._poll(after, limit, min(wait_ms, MAX_WAIT_MS)) if mode == "poll" else self._sse(after)
        async for event in events:
            self.last_cursor = event.id
            yield event

    async def _poll(self, after: str | None, limit: int, wait_ms: int) -> AsyncIterator[Event]:
        cursor = after
        while True:
            page = await _retrying(partial(self.read, cursor, limit=limit, wait_ms=wait_ms))
            for event in page.events:
                yield event
            cursor = page.next

    async def _sse(self, after: str | None) -> AsyncIterator[Event]:
        last = after
        failures = 0
        while True:
            try:
                async for event in self._stream_once(last):
                    failures = 0
                    last = event.id
                    yield event
                failures += 1  # the server closed the stream (it may be shutting down)
            except SdkError as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                await asyncio.sleep(retry_delay_s(failures, exc))
                continue
            await asyncio.sleep(retry_delay_s(failures))

    async def _stream_once(self, last_event_id: str | None) -> AsyncIterator[Event]:
        """One Server-Sent Events connection, from `last_event_id`, until it ends or breaks."""
        http = self._http
        path = f"{http._prefix}/v1/events/stream"
        headers = sign_headers(http._api_key, "GET", path, b"")
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self._sse_idle_timeout_s)
        try:
            async with http._get_session().get(
                URL(http._origin + path, encoded=True), headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise _error(resp.status, await resp.read(), resp.headers)
                async for message in _sse_messages(resp.content):
                    try:
                        event = _event.decode(message.data)
                    except msgspec.MsgspecError as exc:
                        raise ApiError(resp.status, f"unexpected event in the stream: {exc}") from exc
                    yield event
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise TransportError(f"GET /v1/events/stream: {type(exc).__name__}: {exc}") from exc

    # --- durable consumers -----------------------------------------------------------------

    def consumer(self, name: str) -> ConsumerClient:
        """The consumer called `name` (create it with `.create()`)."""
        return ConsumerClient(self, name)

    async def consumers(self) -> builtins.list[Consumer]:
        return await self._consumers.list()

    # --- webhooks --------------------------------------------------------------------------

    async def create_webhook(self, url: str, *, event_types: Sequence[str] = (), secret: str | None = None) -> Webhook:
        """Register an endpoint. Without `secret` one is generated and returned in `secret`,
        this once only."""
        return await self._webhooks.create(url, event_types=event_types, secret=secret)

    async def webhooks(self) -> builtins.list[Webhook]:
        return await self._webhooks.list()

    async def webhook(self, webhook_id: str) -> Webhook:
        return await self._webhooks.get(webhook_id)

    async def resume_webhook(self, webhook_id: str) -> Webhook:
        """Unpark a parked endpoint; its next event is retried at once."""
        return await self._webhooks.resume(webhook_id)

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._webhooks.delete(webhook_id)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ConsumerClient:
    """A durable consumer: a position kept by the server, read from and moved by acknowledging."""

    def __init__(self, events: EventsClient, name: str) -> None:
        self._consumers = events._consumers
        self.name = name

    async def create(self, start: Literal["oldest", "latest"] = "oldest", *, exist_ok: bool = True) -> Consumer:
        """Create the consumer at the oldest retained event or at the latest; with `exist_ok`,
        an existing one is returned as it stands."""
        return await self._consumers.create(self.name, start, exist_ok=exist_ok)

    async def get(self) -> Consumer:
        return await self._consumers.get(self.name)

    async def read(self, *, limit: int = 100, wait_ms: int = 0) -> EventPage:
        """Events after the consumer's position; the position moves only by `ack`."""
        return await self._consumers.read(self.name, limit=limit, wait_ms=wait_ms)

    async def ack(self, cursor: str) -> Consumer:
        """Move the position forward to `cursor` (an event's id or a page's `next`); an older
        cursor changes nothing."""
        return await self._consumers.ack(self.name, cursor)

    async def delete(self) -> None:
        await self._consumers.delete(self.name)

    async def iter(self, *, limit: int = 100, wait_ms: int = 30_000) -> AsyncGenerator[Event, None]:
        """Every event from the consumer's position on, without end. A page is acknowledged
        once the loop has taken all of its events, so an event is acknowledged only after the
        code that handled it has finished: delivery is at least once."""
        while True:
            page = await _retrying(partial(self.read, limit=limit, wait_ms=min(wait_ms, MAX_WAIT_MS)))
            for event in page.events:
                yield event
            if page.events:
                await _retrying(partial(self.ack, page.next))


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again after a backoff while it fails transiently; other errors are raised."""
    failures = 0
    while True:
        try:
            return await call()
        except SdkError as exc:
            if not is_transient(exc):
                raise
            failures += 1
            await asyncio.sleep(retry_delay_s(failures, exc))
