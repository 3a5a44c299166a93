"""Request authentication: HMAC-signed tenant and worker keys, and the operator's bearer token."""

from __future__ import annotations

import hmac
import time
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

import db
from core import Forbidden, Unauthenticated, parse_uint, signing

from .runtime import Runtime
from .telemetry import logs

# Unix seconds in ten digits last until the year 2286; anything longer is not a timestamp.
MAX_TIMESTAMP = 10**10


class Principal(msgspec.Struct, frozen=True):
    key_id: str
    tenant_id: str | None  # None: a shared worker key, serving every tenant


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    rt: Runtime = connection.app.state.runtime
    return rt


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    p: Principal = request.state.principal
    return p


def tenant_of(request: Request[Any, Any, Any]) -> str:
    """The calling tenant; shared worker keys may only lease and acknowledge."""
    tenant_id = principal_of(request).tenant_id
    if tenant_id is None:
        raise Forbidden("a shared worker key may only lease jobs and report on them")
    return tenant_id


def _refuse(rt: Runtime, reason: str, detail: str) -> Unauthenticated:
    rt.metrics.auth_failures.add(1, {"reason": reason})
    return Unauthenticated(detail, reason=reason)


def _path_with_query(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scope = connection.scope
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    qs = scope.get("query_string", b"")
    return f"{path}?{qs.decode('latin-1')}" if qs else path


async def signed(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard for tenant and worker routes: verifies the four signing headers (docs/protocol.md)."""
    rt = runtime_of(connection)
    h = connection.headers
    key_id = h.get(signing.HEADER_KEY_ID)
    timestamp = h.get(signing.HEADER_TIMESTAMP)
    nonce = h.get(signing.HEADER_NONCE)
    sig = h.get(signing.HEADER_SIGNATURE)
    if not key_id or not timestamp or not nonce or not sig:
        raise _refuse(rt, "missing_header", "X-Key-Id, X-Timestamp, X-Nonce and X-Signature are required")
    sent_at = parse_uint(timestamp, maximum=MAX_TIMESTAMP)
    if sent_at is None or abs(time.time() - sent_at) > signing.MAX_SKEW_SECONDS:
        raise _refuse(
            rt, "timestamp", f"X-Timestamp must be unix seconds within {signing.MAX_SKEW_SECONDS} s of the server clock"
        )
    if not signing.NONCE_RE.match(nonce):
        raise _refuse(rt, "nonce", "X-Nonce must be 16 to 64 characters of [A-Za-z0-9_-]")
    # Reads (and caches for the handler) the body, enforcing the size limit first.
    body = await Request[Any, Any, Any](connection.scope, connection.receive).body()
    method = connection.scope["method"]  # type: ignore[typeddict-item]
    async with rt.pool.acquire() as conn:
        secret = rt.key_secrets.get(key_id)
        if secret is None:
            key = await db.api_key_get(conn, key_id)
            if key is None:
                raise _refuse(rt, "unknown_key", "unknown key")
            if key.revoked:
                raise _refuse(rt, "revoked_key", "this key has been revoked")
            secret = key.secret
            rt.key_secrets.put(key_id, secret)
        if not signing.verify(secret, sig, method, _path_with_query(connection), timestamp, nonce, body):
            raise _refuse(rt, "bad_signature", "the signature does not match the request")
        use = await db.api_key_use(conn, key_id, nonce)
    if use is None or use.revoked:
        rt.key_secrets.forget(key_id)
        if use is None:
            raise _refuse(rt, "unknown_key", "unknown key")
        raise _refuse(rt, "revoked_key", "this key has been revoked")
    if not use.fresh_nonce:
        raise _refuse(rt, "replayed_nonce", "this nonce was already used")
    if use.tenant_disabled:
        raise Forbidden("this tenant is disabled")
    connection.state.principal = Principal(key_id, use.tenant_id)
    logs.tenant_id.set(use.tenant_id)


async def operator(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard for /v1/admin: the server's admin token as a bearer token."""
    rt = runtime_of(connection)
    expected = rt.settings.admin_token
    auth = connection.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        if connection.headers.get(signing.HEADER_KEY_ID):
            raise Forbidden("tenant and worker keys may not use operator routes")
        raise _refuse(rt, "missing_header", "Authorization: Bearer <admin token> is required")
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise _refuse(rt, "bad_admin_token", "invalid admin token")
