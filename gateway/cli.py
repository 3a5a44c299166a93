"""The `orchestrator` command: serve, migrate, db-dump, worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import db
from core import load_settings

from . import logs


def _admin_token(data_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


async def _schema_problem(dsn: str) -> str | None:
    conn = await db.connect(dsn)
    try:
        return db.schema_status(await db.current_revision(conn))
    finally:
        await conn.close()


def _database(data_dir: Path, configured: str | None) -> tuple[str, db.EmbeddedPostgres | None]:
    if configured:
        return configured, None
    embedded = db.EmbeddedPostgres(data_dir / "pg")
    dsn = embedded.dsn()
    print(f"embedded PostgreSQL running in {embedded.data_dir} ({dsn})", flush=True)
    return dsn, embedded


class _Stopped(Exception):
    pass


def _exit_quietly(_sig: int, _frame: object) -> None:
    raise _Stopped


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings(os.environ)
    data_dir = Path(settings.data_dir)
    dsn, embedded = _database(data_dir, settings.database_url)
    metrics_dir: str | None = None
    try:
        problem = asyncio.run(_schema_problem(dsn))
        if problem is not None:
            if not (args.migrate or embedded is not None) or "newer" in problem:
                print(f"orchestrator: refusing to start: {problem}", file=sys.stderr)
                return 2
            db.upgrade(dsn)
            print("migrated the database to the current schema", flush=True)
        token = _admin_token(data_dir, settings.admin_token)
        # Worker processes build their settings from this environment.
        os.environ["DATABASE_URL"] = dsn
        os.environ["ORCH_ADMIN_TOKEN"] = token
        if args.workers > 1 and not settings.metrics_dir:
            # Processes behind one port share their metrics through this folder (see metrics_merge).
            metrics_dir = tempfile.mkdtemp(prefix="orch-metrics-")
            os.environ["ORCH_METRICS_DIR"] = metrics_dir
        print(f"Job Orchestrator listening on http://{args.host}:{args.port} ({args.workers} process(es))", flush=True)
        if settings.admin_token is None:
            print(f"admin token: {token} (kept in {data_dir / 'admin_token'})", flush=True)
        # uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown; turn that into a normal exit
        # so the embedded database below is stopped rather than left running.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_quietly)
        with contextlib.suppress(_Stopped):
            uvicorn.run(
                "gateway.app:create_app",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                loop="uvloop",
                http="httptools",
                log_level=args.log_level,
                log_config=logs.dict_config(args.log_level, json_lines=settings.log_json),
                access_log=False,
                timeout_graceful_shutdown=5,
                # Longer than clients keep idle connections (the SDK: 30 s), so the server never
                # closes one under a request in flight.
                timeout_keep_alive=75,
            )
        return 0
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            embedded.stop()


def migrate(_args: argparse.Namespace) -> int:
    settings = load_settings(os.environ)
    dsn, embedded = _database(Path(settings.data_dir), settings.database_url)
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
        server, embedded = _database(Path(tmp), settings.database_url)
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


def worker(args: argparse.Namespace) -> int:
    from sdk.cli import main as worker_main

    result: int = worker_main(args.args)
    return result


def main(argv: list[str] | None = None) -> int:
    logs.configure("info", json_lines=load_settings(os.environ).log_json)
    parser = argparse.ArgumentParser(prog="orchestrator", description="Job Orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (embedded PostgreSQL when DATABASE_URL is unset)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="gateway processes")
    p.add_argument("--migrate", action="store_true", help="migrate the database first when it is behind")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=serve)
    p = sub.add_parser("migrate", help="migrate the database to the current schema")
    p.set_defaults(func=migrate)
    p = sub.add_parser("db-dump", help="write db/schema.sql from the migrations")
    p.add_argument("--check", action="store_true", help="fail when db/schema.sql is out of date")
    p.set_defaults(func=db_dump)
    # Everything after `worker` goes to the SDK's own parser untouched: no option here may look like one.
    p = sub.add_parser(
        "worker", help="run a worker: orchestrator worker module:handler [--help]", add_help=False, prefix_chars="\0"
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=worker)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
