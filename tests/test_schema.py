"""The committed db/schema.sql is what the migrations produce, and they round-trip."""

from __future__ import annotations

import asyncio

import pytest

import db

from .support import fetchval

pytestmark = pytest.mark.timeout(120)


def test_migrations_produce_the_committed_schema(database_url: str) -> None:
    assert db.dump_schema(database_url) == db.SCHEMA_FILE.read_text(), "db/schema.sql is stale: run `just db-dump`"


async def test_downgrade_then_upgrade_round_trips(database_url: str) -> None:
    before = db.dump_schema(database_url)
    await asyncio.to_thread(db.downgrade, database_url, "base")
    assert (
        await fetchval(
            database_url,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'",
        )
        == 0
    )
    assert await fetchval(database_url, "SELECT count(*) FROM pg_type WHERE typname = 'job_state'") == 0
    await asyncio.to_thread(db.upgrade, database_url)
    assert db.dump_schema(database_url) == before


async def test_database_enforces_the_state_machine(database_url: str) -> None:
    import asyncpg

    conn = await db.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (id) VALUES ('t')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO jobs (tenant_id, queue, state, max_attempts, finished_at) VALUES ('t', 'q', 'ready', 1, now())"
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO jobs (tenant_id, queue, state, max_attempts) VALUES ('t', 'q', 'succeeded', 1)"
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO jobs (tenant_id, queue, state, max_attempts) VALUES ('t', 'q', 'running', 1)"
            )
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await conn.execute("INSERT INTO jobs (tenant_id, queue, state, max_attempts) VALUES ('t', 'q', 'lost', 1)")
    finally:
        await conn.close()
