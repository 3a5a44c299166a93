"""`orchestrator serve`: the gateway processes, on an embedded PostgreSQL unless DATABASE_URL."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import db
from core import load_settings, logfmt

from ..telemetry import logs, tracing
from .database import CannotStart, open_database, schema_problem

log = logging.getLogger("orchestrator.cli")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded PostgreSQL when DATABASE_URL is unset)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="gateway processes")
    p.add_argument("--migrate", action="store_true", help="migrate the database first when it is behind")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="json (one object per line) or text; default ORCH_LOG_FORMAT, else json unless stdout is a terminal",
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="no line per request (ORCH_ACCESS_LOG=off does the same)"
    )
    p.set_defaults(func=serve)


def _admin_token(data_dir: Path, configured: str | None) -> tuple[str, bool]:
    """The admin token, and whether it was made just now."""
    if configured:
        return configured, False
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, True


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before saying anything is listening on it."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise CannotStart(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with --port"
        ) from None


class _Stopped(Exception):
    pass


def _exit_quietly(_sig: int, _frame: object) -> None:
    raise _Stopped


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings(os.environ)
    problem = tracing.check_exporter(settings.traces)
    if problem is not None:
        raise CannotStart(problem)
    data_dir = Path(settings.data_dir)
    dsn, embedded = open_database(data_dir, settings.database_url)
    metrics_dir: str | None = None
    try:
        problem = schema_problem(dsn)
        if problem is not None:
            if not (args.migrate or embedded is not None) or "newer" in problem:
                raise CannotStart(f"refusing to start: {problem}")
            db.upgrade(dsn)
            log.info("migrated the database to the current schema")
        _check_port(args.host, args.port)
        token, generated = _admin_token(data_dir, settings.admin_token)
        fmt: logfmt.LogFormat = args.log_format or settings.log_format or logfmt.default_format()
        if args.no_access_log:
            os.environ["ORCH_ACCESS_LOG"] = "off"
        # Worker processes build their settings from this environment.
        os.environ["DATABASE_URL"] = dsn
        os.environ["ORCH_ADMIN_TOKEN"] = token
        if args.workers > 1 and not settings.metrics_dir:
            # Processes behind one port share their metrics through this folder (see metrics_merge).
            metrics_dir = tempfile.mkdtemp(prefix="orch-metrics-")
            os.environ["ORCH_METRICS_DIR"] = metrics_dir
        log.info("Job Orchestrator listening on http://%s:%d (%d process(es))", args.host, args.port, args.workers)
        if generated:
            # Shown once, when made; later starts read it from the file and say nothing of it.
            log.info("admin token: %s (generated; kept in %s)", token, data_dir / "admin_token")
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
                log_config=logs.dict_config(args.log_level, fmt),
                access_log=False,
                timeout_graceful_shutdown=5,
                # A process importing the app on a busy host may take longer than uvicorn's 5 s
                # before it answers the health check; it was killed and started again in a loop.
                timeout_worker_healthcheck=30,
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
