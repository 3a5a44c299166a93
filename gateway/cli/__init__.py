"""The `orchestrator` command, one module per command group: serve, migrate/db-dump, worker, and the
operator's tenants, jobs, dead, queues, schedules and workers (over the admin API)."""

from __future__ import annotations

import argparse
import os
import sys

from core import Settings, load_settings, logfmt

from ..telemetry import logs

# The commands that run the server side, and so need its settings to be valid.
SERVER_COMMANDS = frozenset({"serve", "migrate", "db-dump", "reset"})


def main(argv: list[str] | None = None) -> int:
    try:
        from . import database, dead, jobs, queues, schedules, serve, tenants, worker, workers
    except ImportError as exc:  # an install of the client alone
        print(
            f"orchestrator: the server is not installed ({exc.name} is missing): "
            "pip install 'job-orchestrator[server]'; a worker needs only `orchestrator-worker`",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog="orchestrator", description="Job Orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    database.add_parsers(sub)
    worker.add_parser(sub)
    for group in (tenants, jobs, dead, queues, schedules, workers):
        group.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except ValueError as exc:
        if args.command in SERVER_COMMANDS:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return 2
        settings = Settings()  # a client command: the server's settings are not its business
    fmt = getattr(args, "log_format", None) or settings.log_format or logfmt.default_format()
    logs.configure(getattr(args, "log_level", "info"), fmt)
    try:
        result: int = args.func(args)
    except database.CannotStart as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    return result
