"""Tenant and API key commands."""

from __future__ import annotations

import asyncpg
import msgspec

from core.wire import Tenant

from ._queries import one, sql
from ._types import Conn
from .rows import tenant_from_row

_INSERT = sql("tenant_insert")
_GET = sql("tenant_get")
_LIST = sql("tenant_list")
_UPDATE = sql("tenant_update")
_KEY_INSERT = sql("api_key_insert")
_KEY_GET = sql("api_key_get")
_KEY_REVOKE = sql("api_key_revoke")
_KEY_USE = sql("api_key_use")
_NONCE_PRUNE = sql("request_nonce_prune")
_POLICY_UPSERT = sql("retry_policy_upsert")
_POLICY_GET = sql("retry_policy_get")
_POLICY_DELETE = sql("retry_policy_delete")


async def tenant_insert(conn: Conn, tenant_id: str, name: str, weight: int, max_inflight: int | None) -> Tenant | None:
    """The new tenant, or None when the id exists."""
    row = await conn.fetchrow(_INSERT, tenant_id, name, weight, max_inflight)
    return None if row is None else tenant_from_row(row)


async def tenant_get(conn: Conn, tenant_id: str) -> Tenant | None:
    row = await conn.fetchrow(_GET, tenant_id)
    return None if row is None else tenant_from_row(row)


async def tenant_list(conn: Conn) -> list[Tenant]:
    return [tenant_from_row(r) for r in await conn.fetch(_LIST)]


async def tenant_update(
    conn: Conn,
    tenant_id: str,
    *,
    name: str | None,
    weight: int | None,
    max_inflight: int | msgspec.UnsetType | None,
    disabled: bool | None,
) -> Tenant | None:
    set_cap = max_inflight is not msgspec.UNSET
    cap = None if isinstance(max_inflight, msgspec.UnsetType) else max_inflight
    row = await conn.fetchrow(_UPDATE, tenant_id, name, weight, set_cap, cap, disabled)
    return None if row is None else tenant_from_row(row)


class KeyRecord(msgspec.Struct, frozen=True):
    key_id: str
    secret: str
    tenant_id: str | None
    revoked: bool
    tenant_disabled: bool


async def api_key_insert(conn: Conn, key_id: str, secret: str, tenant_id: str | None) -> None:
    await conn.execute(_KEY_INSERT, key_id, secret, tenant_id)


async def api_key_get(conn: Conn, key_id: str) -> KeyRecord | None:
    r = await conn.fetchrow(_KEY_GET, key_id)
    if r is None:
        return None
    return KeyRecord(r["key_id"], r["secret"], r["tenant_id"], r["revoked"], r["tenant_disabled"])


async def api_key_revoke(conn: Conn, key_id: str) -> bool:
    return await conn.fetchval(_KEY_REVOKE, key_id) is not None


class KeyUse(msgspec.Struct, frozen=True):
    tenant_id: str | None
    revoked: bool
    tenant_disabled: bool
    fresh_nonce: bool  # False for a replay (or a revoked key, whose nonces are not recorded)


async def api_key_use(conn: Conn, key_id: str, nonce: str) -> KeyUse | None:
    """The key's standing now, recording the nonce; None when the key does not exist."""
    r = await conn.fetchrow(_KEY_USE, key_id, nonce)
    if r is None:
        return None
    return KeyUse(r["tenant_id"], r["revoked"], r["tenant_disabled"], r["fresh"])


async def request_nonce_prune(conn: Conn, older_than_seconds: int) -> None:
    await conn.execute(_NONCE_PRUNE, older_than_seconds)


class RetryPolicyRow(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    max_attempts: int | None
    retry_base_ms: int | None
    retry_cap_ms: int | None


def _policy(r: asyncpg.Record) -> RetryPolicyRow:
    return RetryPolicyRow(
        queue=r["queue"],
        max_attempts=r["max_attempts"],
        retry_base_ms=r["retry_base_ms"],
        retry_cap_ms=r["retry_cap_ms"],
    )


async def retry_policy_upsert(conn: Conn, tenant_id: str, policy: RetryPolicyRow) -> RetryPolicyRow:
    row = one(
        await conn.fetchrow(
            _POLICY_UPSERT, tenant_id, policy.queue, policy.max_attempts, policy.retry_base_ms, policy.retry_cap_ms
        )
    )
    return _policy(row)


async def retry_policy_get(conn: Conn, tenant_id: str, queue: str) -> RetryPolicyRow | None:
    row = await conn.fetchrow(_POLICY_GET, tenant_id, queue)
    return None if row is None else _policy(row)


async def retry_policy_delete(conn: Conn, tenant_id: str, queue: str) -> bool:
    return await conn.fetchval(_POLICY_DELETE, tenant_id, queue) is not None
