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


async def test_sql_backoff_matches_the_core_policy(database_url: str) -> None:
    from core import backoff_ms

    cases = [
        (a, base, cap, j)
        for a in (1, 2, 3, 7, 40, 200)
        for base, cap in ((100, 10_000), (1000, 3_600_000))
        for j in (0.0, 0.25, 0.999)
    ]
    conn = await db.connect(database_url)
    try:
        for attempt, base, cap, jitter in cases:
            got = await conn.fetchval("SELECT orch_backoff_ms($1, $2, $3, $4)", attempt, base, cap, jitter)
            assert got == backoff_ms(attempt, base, cap, jitter), (attempt, base, cap, jitter)
    finally:
        await conn.close()
