"""`orchestrator migrate` and `orchestrator db-dump`: the schema."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import db
from core import load_settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("migrate", help="migrate the database to the current schema")
    p.set_defaults(func=migrate)
    p = sub.add_parser("db-dump", help="write db/schema.sql from the migrations")
    p.add_argument("--check", action="store_true", help="fail when db/schema.sql is out of date")
    p.set_defaults(func=db_dump)


def open_database(data_dir: Path, configured: str | None) -> tuple[str, db.EmbeddedPostgres | None]:
    if configured:
        return configured, None
    embedded = db.EmbeddedPostgres(data_dir / "pg")
    dsn = embedded.dsn()
    print(f"embedded PostgreSQL running in {embedded.data_dir} ({dsn})", flush=True)
    return dsn, embedded


def migrate(_args: argparse.Namespace) -> int:
    settings = load_settings(os.environ)
    dsn, embedded = open_database(Path(settings.data_dir), settings.database_url)
    try:
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
