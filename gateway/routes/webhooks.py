"""Webhooks: the tenant routes under /v1/webhooks (delivery is `services.webhook_publisher`)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from yarl import URL

import db
from core import InvalidInput, MalformedInput, NotFound
from core.states import EventType
from core.wire import Webhook, WebhookCreate, WebhookList

from ..auth import runtime_of, signed, tenant_of
from ..services import webhook_publisher
from . import _paths
from ._body import Body


def _webhook_out(w: db.WebhookRow, secret: str | None = None) -> Webhook:
    return Webhook(
        id=str(w.id),
        url=w.url,
        event_types=[EventType(t) for t in w.event_types],
        state="parked" if w.state == "parked" else "active",
        cursor=str(w.cursor),
        attempts=w.attempts,
        next_attempt_at=w.next_attempt_at,
        delivered=w.delivered,
        created_at=w.created_at,
        last_status=w.last_status,
        last_error=w.last_error,
        last_attempt_at=w.last_attempt_at,
        last_delivered_at=w.last_delivered_at,
        secret=secret,
    )


_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


def _host_port(url: str) -> tuple[str, int]:
    """The (host, port) a URL names; InvalidInput for anything but an absolute http(s) URL.
    Parsed as the delivering client parses it, so the host checked is the host it connects to."""
    if any(c <= " " or c == "\x7f" for c in url):
        # Parsers disagree on white space and control characters; a URL needs none.
        raise InvalidInput("url: holds white space or a control character", field="url")
    try:
        parts = URL(url)
        scheme, host, port = parts.scheme.lower(), parts.raw_host, parts.port
    except (ValueError, TypeError):
        raise InvalidInput("url: not a valid URL", field="url") from None
    if scheme not in ("http", "https"):
        raise InvalidInput("url: only http and https URLs can receive webhooks", field="url")
    if not host:
        raise InvalidInput("url: names no host", field="url")
    host = host.lower().rstrip(".")
    # A name whose last label is a number is an address in a legacy notation (127.1, 0x7f.1).
    if not _is_ip(host) and (not webhook_publisher.is_host_name(host) or _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1])):
        raise InvalidInput("url: the host is neither a host name nor an IP address", field="url")
    return host, port or (443 if scheme == "https" else 80)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.replace("%25", "%"))
    except ValueError:
        return False
    return True


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.replace("%25", "%"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _own_addresses(request: Request[Any, Any, Any], public_url: str | None) -> set[tuple[str, int]]:
    """The addresses this gateway answers on, as far as it can tell."""
    own: set[tuple[str, int]] = set()
    # From the scope: `request.url` parses the Host header and fails on a malformed one.
    scheme = str(request.scope.get("scheme") or "http")
    host_header = request.headers.get("host")
    if host_header:
        try:
            own.add(_host_port(f"{scheme}://{host_header}"))
        except InvalidInput:
            raise MalformedInput("the Host header is not a host and port") from None
    server = request.scope.get("server")
    if server and server[1] is not None:
        own.add((str(server[0]).lower(), int(server[1])))
    if public_url:
        with contextlib.suppress(InvalidInput):
            own.add(_host_port(public_url))
    return own


async def check_url(url: str, own: set[tuple[str, int]], policy: webhook_publisher.DestinationPolicy) -> None:
    """422 for a URL that is not http(s), points at this gateway, or leads only to addresses
    webhooks may not reach (internal ones, unless the operator allows them)."""
    host, port = _host_port(url)
    for own_host, own_port in own:
        if port == own_port and (host == own_host or (_is_local(host) and _is_local(own_host))):
            raise InvalidInput("url: must not point at this gateway", field="url")
    refusal = await webhook_publisher.registration_refusal(host, port, policy)
    if refusal is not None:
        raise InvalidInput(
            f"url: {refusal}; webhooks may not reach internal addresses unless the operator allows them",
            field="url",
        )


class WebhooksController(Controller):
    path = "/v1/webhooks"
    guards = [signed]
    tags = ["webhooks"]

    @post(
        "/",
        status_code=201,
        summary="Register an endpoint; it receives events committed from now on",
        dto=Body[WebhookCreate],
        return_dto=None,
    )
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[WebhookCreate]) -> Webhook:
        rt = runtime_of(request)
        own = _own_addresses(request, rt.settings.public_url)
        await check_url(data.url, own, webhook_publisher.destination_policy(rt.settings))
        secret = data.secret if data.secret is not None else "whsec_" + secrets.token_urlsafe(32)
        generated = None if data.secret is not None else secret
        types = list(dict.fromkeys(t.value for t in data.event_types))
        async with rt.pool.acquire() as conn:
            row = await db.webhook_insert(conn, tenant_of(request), data.url, types, secret)
        webhook_publisher.kick(rt)
        return _webhook_out(row, secret=generated)

    @get("/", summary="The tenant's webhook endpoints")
    async def list_webhooks(self, request: Request[Any, Any, Any]) -> WebhookList:
        async with runtime_of(request).pool.acquire() as conn:
            rows = await db.webhook_list(conn, tenant_of(request))
        return WebhookList(webhooks=[_webhook_out(r) for r in rows])

    @get("/{webhook_id:str}", summary="An endpoint and how its deliveries stand")
    async def get_webhook(self, request: Request[Any, Any, Any], webhook_id: FromPath[str]) -> Webhook:
        async with runtime_of(request).pool.acquire() as conn:
            row = await db.webhook_get(conn, _paths.webhook_id(webhook_id), tenant_of(request))
        if row is None:
            raise NotFound("no such webhook")
        return _webhook_out(row)

    @delete("/{webhook_id:str}", status_code=204, summary="Remove an endpoint")
    async def delete_webhook(self, request: Request[Any, Any, Any], webhook_id: FromPath[str]) -> Response[None]:
        async with runtime_of(request).pool.acquire() as conn:
            if not await db.webhook_delete(conn, _paths.webhook_id(webhook_id), tenant_of(request)):
                raise NotFound("no such webhook")
        return Response(None, status_code=204)

    @post("/{webhook_id:str}/resume", status_code=200, summary="Unpark an endpoint and retry its next event now")
    async def resume(self, request: Request[Any, Any, Any], webhook_id: FromPath[str]) -> Webhook:
        rt = runtime_of(request)
        async with rt.pool.acquire() as conn:
            row = await db.webhook_resume(conn, _paths.webhook_id(webhook_id), tenant_of(request))
        if row is None:
            raise NotFound("no such webhook")
        webhook_publisher.kick(rt)
        return _webhook_out(row)
