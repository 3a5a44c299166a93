"""A tenant's own resources beside its jobs: schedules, retry policies, queues, durable
consumers and webhooks. Each is a namespace over the client's one transport
(`producer.schedules`, `producer.queues`, ...)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from core.states import EventType
from core.wire import (
    Consumer,
    ConsumerAck,
    ConsumerCreate,
    ConsumerList,
    EventPage,
    PausedQueues,
    QueueState,
    RetryPolicy,
    RetryPolicyOut,
    Schedule,
    ScheduleCreate,
    ScheduleList,
    SchedulePatch,
    Webhook,
    WebhookCreate,
    WebhookList,
)

from ._errors import Conflict
from ._http import Transport, body_of, patch_body_of

_schedule = msgspec.json.Decoder(Schedule)
_schedules = msgspec.json.Decoder(ScheduleList)
_policy = msgspec.json.Decoder(RetryPolicyOut)
_queue_state = msgspec.json.Decoder(QueueState)
_paused = msgspec.json.Decoder(PausedQueues)
_consumer = msgspec.json.Decoder(Consumer)
_consumers = msgspec.json.Decoder(ConsumerList)
_page = msgspec.json.Decoder(EventPage)
_webhook = msgspec.json.Decoder(Webhook)
_webhooks = msgspec.json.Decoder(WebhookList)

Start = Literal["oldest", "latest"]


def _seg(value: str) -> str:
    """One path segment, percent-encoded so the URL and its signature stay well-formed."""
    return quote(value, safe="")


class Schedules:
    """Cron schedules (`/v1/schedules`): each fires a job of its kind once per due time."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    async def create(
        self,
        name: str,
        cron: str,
        *,
        timezone: str = "UTC",
        queue: str = "default",
        kind: str = "",
        payload: dict[str, Any] | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Create a schedule; Conflict when the tenant has one of that name."""
        req = ScheduleCreate(
            name=name,
            cron=cron,
            timezone=timezone,
            queue=queue,
            kind=kind,
            payload=payload or {},
            priority=priority,
            max_attempts=max_attempts,
            paused=paused,
        )
        return await self._http.request("POST", "/v1/schedules", _schedule, body=body_of(req))

    async def list(self) -> builtins.list[Schedule]:
        return (await self._http.request("GET", "/v1/schedules", _schedules)).schedules

    async def get(self, name: str) -> Schedule:
        return await self._http.request("GET", f"/v1/schedules/{_seg(name)}", _schedule)

    async def update(
        self,
        name: str,
        *,
        rename: str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        payload: dict[str, Any] | None = None,
        priority: int | None = None,
        max_attempts: int | msgspec.UnsetType | None = msgspec.UNSET,
        paused: bool | None = None,
    ) -> Schedule:
        """Change the fields given; the others stay. `max_attempts=None` clears it (the
        server's default applies). A new timing, or a resume, counts from now."""
        req = SchedulePatch(
            name=rename,
            cron=cron,
            timezone=timezone,
            queue=queue,
            kind=kind,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            paused=paused,
        )
        return await self._http.request("PATCH", f"/v1/schedules/{_seg(name)}", _schedule, body=patch_body_of(req))

    async def pause(self, name: str) -> Schedule:
        return await self.update(name, paused=True)

    async def resume(self, name: str) -> Schedule:
        """Resume a paused schedule; fires missed while it was paused stay missed."""
        return await self.update(name, paused=False)

    async def delete(self, name: str) -> None:
        await self._http.request_empty("DELETE", f"/v1/schedules/{_seg(name)}")


class RetryPolicies:
    """Retry policies: the tenant-wide one (`queue=None`) and one per queue. A field left
    None falls through to the next level (queue, tenant, deployment)."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    @staticmethod
    def _path(queue: str | None) -> str:
        return "/v1/retry-policy" if queue is None else f"/v1/queues/{_seg(queue)}/retry-policy"

    async def get(self, queue: str | None = None) -> RetryPolicyOut:
        """The policy as set (all fields None when none was)."""
        return await self._http.request("GET", self._path(queue), _policy)

    async def set(
        self,
        queue: str | None = None,
        *,
        max_attempts: int | None = None,
        retry_base_ms: int | None = None,
        retry_cap_ms: int | None = None,
    ) -> RetryPolicyOut:
        """Replace the policy with these values."""
        req = RetryPolicy(max_attempts=max_attempts, retry_base_ms=retry_base_ms, retry_cap_ms=retry_cap_ms)
        return await self._http.request("PUT", self._path(queue), _policy, body=body_of(req))

    async def delete(self, queue: str) -> None:
        """Drop a queue's policy; NotFound when it has none."""
        await self._http.request_empty("DELETE", self._path(queue))


class Queues:
    """Pausing the tenant's queues: leases skip a paused queue, its jobs wait for the resume."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    async def pause(self, queue: str) -> QueueState:
        return await self._http.request("POST", f"/v1/queues/{_seg(queue)}/pause", _queue_state)

    async def resume(self, queue: str) -> QueueState:
        return await self._http.request("POST", f"/v1/queues/{_seg(queue)}/resume", _queue_state)

    async def paused(self) -> builtins.list[str]:
        """The names of the tenant's paused queues."""
        return (await self._http.request("GET", "/v1/queues/paused", _paused)).queues


class Consumers:
    """Durable consumers (`/v1/consumers`): named event positions kept by the server."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    @staticmethod
    def _path(name: str, action: str = "") -> str:
        path = f"/v1/consumers/{_seg(name)}"
        return f"{path}/{action}" if action else path

    async def create(self, name: str, start: Start = "oldest", *, exist_ok: bool = False) -> Consumer:
        """Create a consumer at the oldest retained event or at the latest. Conflict when it
        exists, unless `exist_ok`: then it is returned as it stands."""
        body = body_of(ConsumerCreate(name=name, start=start))
        try:
            return await self._http.request("POST", "/v1/consumers", _consumer, body=body)
        except Conflict:
            if not exist_ok:
                raise
            return await self.get(name)

    async def list(self) -> builtins.list[Consumer]:
        return (await self._http.request("GET", "/v1/consumers", _consumers)).consumers

    async def get(self, name: str) -> Consumer:
        return await self._http.request("GET", self._path(name), _consumer)

    async def read(self, name: str, *, limit: int = 100, wait_ms: int = 0) -> EventPage:
        """Events after the consumer's position; with `wait_ms`, answered as soon as there is
        one. The position moves only by `ack`. `Gone` when retention passed it."""
        query = {"limit": limit, "wait_ms": wait_ms or None}
        timeout = wait_ms / 1000 + self._http.timeout
        return await self._http.request("GET", self._path(name, "events"), _page, query=query, timeout=timeout)

    async def ack(self, name: str, cursor: str) -> Consumer:
        """Move the position forward to `cursor` (an event's id or a page's `next`); an older
        cursor changes nothing."""
        body = body_of(ConsumerAck(cursor=cursor))
        return await self._http.request("POST", self._path(name, "ack"), _consumer, body=body)

    async def delete(self, name: str) -> None:
        await self._http.request_empty("DELETE", self._path(name))


class Webhooks:
    """Webhook endpoints (`/v1/webhooks`): signed deliveries of the tenant's events, in order."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    async def create(self, url: str, *, event_types: Sequence[str] = (), secret: str | None = None) -> Webhook:
        """Register an endpoint for the given event types (none: every type). Without `secret`
        one is generated and returned in `secret`, this once only."""
        req = WebhookCreate(url=url, event_types=[EventType(t) for t in event_types], secret=secret)
        return await self._http.request("POST", "/v1/webhooks", _webhook, body=body_of(req))

    async def list(self) -> builtins.list[Webhook]:
        return (await self._http.request("GET", "/v1/webhooks", _webhooks)).webhooks

    async def get(self, webhook_id: str) -> Webhook:
        return await self._http.request("GET", f"/v1/webhooks/{_seg(webhook_id)}", _webhook)

    async def resume(self, webhook_id: str) -> Webhook:
        """Unpark a parked endpoint; its next event is retried at once."""
        return await self._http.request("POST", f"/v1/webhooks/{_seg(webhook_id)}/resume", _webhook)

    async def delete(self, webhook_id: str) -> None:
        await self._http.request_empty("DELETE", f"/v1/webhooks/{_seg(webhook_id)}")
