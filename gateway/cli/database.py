"""`orchestrator migrate` and `orchestrator db-dump`: the schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg

import db
from core import load_settings

log = logging.getLogger("orchestrator.cli")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reset", help="delete the data folder (the embedded database and the admin token)")
    p.set_defaults(func=reset)
    p = sub.add_parser("migrate", help="migrate the database to the current schema")
    p.set_defaults(func=migrate)
    p = sub.add_parser("db-dump", help="write db/schema.sql from the migrations")
    p.add_argument("--check", action="store_true", help="fail when db/schema.sql is out of date")
    p.set_defaults(func=db_dump)


class CannotStart(Exception):
    """A problem the operator fixes before the command can run: said in one line, exit code 2."""


CONNECT_TIMEOUT_SECONDS = 10.0


def where(dsn: str) -> str:
    """The server and database a URL names, without its credentials."""
    parts = urlsplit(dsn)
    host = parts.hostname or dict(parse_qsl(parts.query)).get("host") or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


async def _schema_problem(dsn: str) -> str | None:
    # Without named statements: the URL may lead through a transaction pooler.
    conn = await asyncio.wait_for(db.connect(dsn, statement_cache=False), CONNECT_TIMEOUT_SECONDS)
    try:
        return db.schema_status(await db.current_revision(conn))
    finally:
        await conn.close()


def schema_problem(dsn: str) -> str | None:
    """What is wrong with the database's schema (None: current), or CannotStart naming why it
    cannot be reached."""
    try:
        return asyncio.run(_schema_problem(dsn))
    except asyncpg.InvalidCatalogNameError:
        raise CannotStart(
            f"the database {where(dsn)} does not exist: create it (createdb), or point DATABASE_URL at another"
        ) from None
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise CannotStart(f"PostgreSQL at {where(dsn)} refused the login: {exc}; check DATABASE_URL") from None
    except TimeoutError:
        raise CannotStart(
            f"no answer from PostgreSQL at {where(dsn)} within {CONNECT_TIMEOUT_SECONDS:g} s; check DATABASE_URL"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise CannotStart(
            f"cannot connect to PostgreSQL at {where(dsn)}: {reason}; is it running? check DATABASE_URL"
        ) from None
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise CannotStart(f"DATABASE_URL is not a PostgreSQL URL this server can use: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise CannotStart(f"PostgreSQL at {where(dsn)} refused the connection: {exc}") from None


def open_database(data_dir: Path, configured: str | None) -> tuple[str, db.EmbeddedPostgres | None]:
    if configured:
        return configured, None
    try:
        embedded = db.EmbeddedPostgres(data_dir / "pg")
    except db.EmbeddedUnavailable as exc:
        raise CannotStart(str(exc)) from None
    dsn = embedded.dsn()
    log.info("embedded PostgreSQL running in %s (%s)", embedded.data_dir, dsn)
    return dsn, embedded


def reset(_args: argparse.Namespace) -> int:
    """Delete the data folder; refused while a process still uses its embedded database. A server
    orphaned by a killed process is stopped first."""
    data_dir = Path(load_settings(os.environ).data_dir)
    pg = data_dir / "pg"
    users = [p for p in db.live_users(pg) if p != os.getpid()]
    if users:
        raise CannotStart(
            f"{pg} is in use by process(es) {', '.join(map(str, users))}: stop them (orchestrator serve) first"
        )
    if db.running_server_pid(pg) is not None:
        db.EmbeddedPostgres(pg).stop()  # adopt the orphan, then stop it as its last user
        print(f"stopped the PostgreSQL server left running in {pg}")
    if data_dir.exists():
        shutil.rmtree(data_dir)
        print(f"deleted {data_dir}")
    return 0


def migrate(_args: argparse.Namespace) -> int:
    settings = load_settings(os.environ)
    dsn, embedded = open_database(Path(settings.data_dir), settings.database_url)
    try:
        problem = schema_problem(dsn)
        if problem is not None and "newer" in problem:
            raise CannotStart(problem)
        db.upgrade(dsn)
        print(f"database at schema {db.head_revision()}")
        return 0
    finally:
        if embedded is not None:
            embedded.stop()


async def _scratch(dsn: str, name: str, create: bool) -> None:
    conn = await db.connect(dsn)
    try:
        if create:
            await db.database_create(conn, name)
        else:
            await db.database_drop(conn, name)
    finally:
        await conn.close()


def db_dump(args: argparse.Namespace) -> int:
    """Migrate a scratch database to head and write (or check) db/schema.sql."""
    settings = load_settings(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        server, embedded = open_database(Path(tmp), settings.database_url)
        name = f"orch_dump_{uuid.uuid4().hex[:8]}"
        asyncio.run(_scratch(server, name, True))
        try:
            dsn = db.with_database(server, name)
            db.upgrade(dsn)
            text = db.dump_schema(dsn)
        finally:
            asyncio.run(_scratch(server, name, False))
            if embedded is not None:
                embedded.stop()
    if args.check:
        if db.SCHEMA_FILE.read_text() != text:
            print("db/schema.sql is out of date: run `just db-dump`", file=sys.stderr)
            return 1
        print("db/schema.sql matches the migrations")
        return 0
    db.SCHEMA_FILE.write_text(text)
    print(f"wrote {db.SCHEMA_FILE}")
    return 0
