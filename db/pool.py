"""Connection pool set-up: jsonb through msgspec in binary form."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + _encode(value)


def _jsonb_decode(data: bytes) -> Any:
    return _decode(data[1:])


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        # Nothing leaves session state on pool connections (LISTEN has its own connection;
        # advisory locks are transaction-level but for the webhook publisher's, which it unlocks
        # or else closes the connection), so releasing one skips asyncpg's RESET round trip.
        # asyncpg still rolls back a transaction left open before calling this.
        reset=_keep_session,
        # Long-polls hold no connection while parked, so the pool serves statements only.
        command_timeout=60,
        server_settings={"application_name": "orchestrator"},
    )
    if pool is None:
        raise RuntimeError("asyncpg created no pool")
    return pool


async def connect(dsn: str, *, application_name: str = "orchestrator") -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": application_name})
    await init_connection(conn)
    return conn
