"""The `orchestrator` command line: embedded default, schema checks, migrate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import db

from .conftest import ADMIN_TOKEN, _admin
from .support import Api, GatewayProcess, eventually, fetchval, free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture
def empty_database(pg_server: str) -> Iterator[str]:
    name = f"orch_empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(pg_server, ("create", name, None)))
    try:
        yield db.with_database(pg_server, name)
    finally:
        asyncio.run(_admin(pg_server, ("drop", name, None)))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=90
    )


def test_serve_refuses_a_database_without_the_schema(empty_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN}
    line = _refusal(_cli("serve", "--port", str(free_port()), env=env))
    assert "no orchestrator schema" in line and "orchestrator migrate" in line, line


def _refusal(out: subprocess.CompletedProcess[str]) -> str:
    """serve's one-line refusal, after checking it exited with 2 and started nothing."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "listening" not in out.stdout, out.stdout
    return lines[0]


def test_serve_refuses_an_older_schema_unless_asked_to_migrate(empty_database: str) -> None:
    db.upgrade(empty_database, "0006")
    env = {**os.environ, "DATABASE_URL": empty_database, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN}
    line = _refusal(_cli("serve", "--port", str(free_port()), env=env))
    assert line.startswith("orchestrator: refusing to start:"), line
    assert "(0006) is older than head" in line and "orchestrator migrate" in line, line
    # refusing changed nothing
    assert asyncio.run(fetchval(empty_database, "SELECT version_num FROM alembic_version")) == "0006"


async def test_serve_with_migrate_upgrades_an_older_schema(empty_database: str) -> None:
    await asyncio.to_thread(db.upgrade, empty_database, "0006")
    gw = GatewayProcess(empty_database, ADMIN_TOKEN, extra_args=["--migrate"])
    try:
        await gw.wait_ready()
    finally:
        output = gw.stop()
    assert "migrated the database to the current schema" in output
    assert await fetchval(empty_database, "SELECT version_num FROM alembic_version") == db.head_revision()


def test_serve_refuses_a_newer_schema_even_with_migrate(empty_database: str) -> None:
    db.upgrade(empty_database)
    asyncio.run(fetchval(empty_database, "UPDATE alembic_version SET version_num = '9999' RETURNING 1"))
    env = {**os.environ, "DATABASE_URL": empty_database, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN}
    for extra in ([], ["--migrate"]):
        line = _refusal(_cli("serve", "--port", str(free_port()), *extra, env=env))
        assert line.startswith("orchestrator: refusing to start:"), line
        assert "(9999) is newer than this orchestrator knows" in line, line
    assert asyncio.run(fetchval(empty_database, "SELECT version_num FROM alembic_version")) == "9999"


async def test_migrate_then_serve(empty_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database}
    out = await asyncio.to_thread(_cli, "migrate", env=env)
    assert out.returncode == 0, out.stderr
    assert await fetchval(empty_database, "SELECT version_num FROM alembic_version") == db.head_revision()
    gw = GatewayProcess(empty_database, ADMIN_TOKEN)
    try:
        await gw.wait_ready()
    finally:
        gw.stop()


async def test_serve_with_migrate_flag_migrates_first(empty_database: str) -> None:
    gw = GatewayProcess(empty_database, ADMIN_TOKEN, extra_args=["--migrate"])
    try:
        await gw.wait_ready()
        client = Api(gw.url, ADMIN_TOKEN)
        try:
            assert (await client.admin("GET", "/v1/admin/tenants")).body == {"tenants": []}
        finally:
            await client.close()
    finally:
        gw.stop()


async def test_embedded_default_starts_its_own_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ORCH_ADMIN_TOKEN")}
    env["ORCH_DATA_DIR"] = str(tmp_path / "data")
    gw = GatewayProcess(None, None, env=env)
    try:
        await gw.wait_ready(timeout=60)
        token_file = tmp_path / "data" / "admin_token"
        token = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        client = Api(gw.url, token)
        try:
            key = await client.tenant("tenant-a")
            assert (await client.signed(key, "POST", "/v1/jobs", {"payload": {}})).status == 201
        finally:
            await client.close()
    finally:
        output = gw.stop()
    assert f"listening on {gw.url}" in output
    assert f"admin token: {token}" in output
    assert "embedded PostgreSQL" in output
    import psutil

    data_dir = str(tmp_path / "data")

    async def postgres_gone() -> bool:
        return not any(data_dir in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))

    await eventually(postgres_gone, timeout=15)
