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


def _cache_size(statement_cache: bool) -> int:
    # Off, every statement is unnamed and parsed again with its execution, so none outlives the
    # transaction, as a transaction-mode pooler without prepared statements (PgBouncer < 1.21)
    # requires; PostgreSQL then plans each on every call.
    return 100 if statement_cache else 0


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20, statement_cache: bool = True) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=_cache_size(statement_cache),
        init=init_connection,
        # Nothing leaves session state on pool connections (LISTEN has its own connection;
        # advisory locks are all transaction-level, the webhook publisher's lease is a row), so
        # releasing one skips asyncpg's RESET round trip; a transaction pooler would not keep
        # session state anyway.
        # asyncpg still rolls back a transaction left open before calling this.
        reset=_keep_session,
        # Long-polls hold no connection while parked, so the pool serves statements only.
        command_timeout=60,
        server_settings={"application_name": "orchestrator"},
    )
    if pool is None:
        raise RuntimeError("asyncpg created no pool")
    return pool


async def connect(
    dsn: str, *, application_name: str = "orchestrator", statement_cache: bool = True
) -> asyncpg.Connection:
    conn = await asyncpg.connect(
        dsn,
        statement_cache_size=_cache_size(statement_cache),
        server_settings={"application_name": application_name},
    )
    await init_connection(conn)
    return conn
