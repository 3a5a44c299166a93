"""The `orchestrator` command, one module per command group: serve, migrate/db-dump, worker."""

from __future__ import annotations

import argparse
import os
import sys

from core import load_settings, logfmt

from ..telemetry import logs
from . import database, serve, worker


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(os.environ)
    except ValueError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="orchestrator", description="Job Orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    database.add_parsers(sub)
    worker.add_parser(sub)
    args = parser.parse_args(argv)
    fmt = getattr(args, "log_format", None) or settings.log_format or logfmt.default_format()
    logs.configure(getattr(args, "log_level", "info"), fmt)
    try:
        result: int = args.func(args)
    except database.CannotStart as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    return result
