"""Every test that touches data gets a real PostgreSQL: a database of its own, created from a
template migrated once per session. `DATABASE_URL` selects an external server; without it an
embedded one is started for the session."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import db
from core import Settings

from .support import Api, InProcessGateway

ADMIN_TOKEN = "test-admin-token-" + secrets.token_hex(8)


async def _admin(dsn: str, *statements: tuple[str, str, str | None]) -> None:
    conn = await db.connect(dsn)
    try:
        for op, name, template in statements:
            if op == "create":
                await db.database_create(conn, name, template)
            else:
                await db.database_drop(conn, name)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a maintenance database on the server the tests use."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="orch-test-pg-") as tmp:
        embedded = db.EmbeddedPostgres(Path(tmp) / "pg")
        try:
            yield embedded.dsn()
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"orch_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(pg_server, ("create", name, None)))
    try:
        db.upgrade(db.with_database(pg_server, name))
        yield name
    finally:
        asyncio.run(_admin(pg_server, ("drop", name, None)))


@pytest.fixture
def database_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_server, ("create", name, template_db)))
    try:
        yield db.with_database(pg_server, name)
    finally:
        asyncio.run(_admin(pg_server, ("drop", name, None)))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, admin_token=ADMIN_TOKEN, reap_interval_seconds=0.2)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[InProcessGateway]:
    gw = InProcessGateway(settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def api(gateway: InProcessGateway) -> AsyncIterator[Api]:
    client = Api(gateway.url, ADMIN_TOKEN)
    try:
        yield client
    finally:
        await client.close()
