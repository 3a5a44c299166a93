"""`python -m bench.verify [--quick]`: start everything, run the checks, print the table."""

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
import textwrap
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from .._infra import CHILDREN, PgServer
from .._session import log
from . import _checks as checks
from ._checks import Row, Run
from ._postgres import ScratchPostgres
from ._procs import Serve, worker_key

# In the order they run: the database restart last, after the metrics were compared with it.
CHECKS: list[tuple[str, Callable[[Run], Awaitable[Row | list[Row]]]]] = [
    ("no double claim", checks.no_double_claim),
    ("lease expiry recovery", checks.lease_expiry_and_fencing),
    ("crash recovery", checks.crash_recovery),
    ("idempotency", checks.idempotency),
    ("outbox order", checks.outbox_order),
    ("fairness by weight", checks.fairness),
    ("in-flight cap", checks.inflight_cap),
    ("cron exactly once", checks.cron_exactly_once),
    ("observability", checks.observability),
    ("database restart", checks.database_restart),
    ("no 500", checks.no_500),
]
# Quick retries and gauges, so that the checks take seconds; the reaper keeps its default,
# which the lease-expiry figure reflects.
GATEWAY_ENV = {"ORCH_RETRY_BASE_MS": "50", "ORCH_RETRY_CAP_MS": "500", "ORCH_STATS_INTERVAL_SECONDS": "1"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.verify", description=(__doc__ or "").strip())
    p.add_argument("--quick", action="store_true", help="smaller runs of every check (about a minute)")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="PostgreSQL server to create the run's database on (default: $DATABASE_URL, else a scratch cluster "
        "of its own, which the database-restart check restarts)",
    )
    return p


def render(rows: list[Row]) -> str:
    widths = (22, 52, 62, 6)
    lines = [
        "| "
        + " | ".join(
            h.ljust(w) for h, w in zip(("guarantee", "how it was checked", "measured", "result"), widths, strict=True)
        )
        + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in rows:
        how = textwrap.wrap(r.how, widths[1]) or [""]
        fig = textwrap.wrap(r.figure, widths[2]) or [""]
        for i in range(max(len(how), len(fig))):
            cells = (
                r.guarantee if i == 0 else "",
                how[i] if i < len(how) else "",
                fig[i] if i < len(fig) else "",
                r.result if i == 0 else "",
            )
            lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    return "\n".join(lines)


async def _run(quick: bool, server_url: str | None) -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="orch-verify-"))
    scratch: ScratchPostgres | None = None
    server: PgServer | None = None
    gw: Serve | None = None
    rows: list[Row] = []
    try:
        if server_url is None:
            scratch = ScratchPostgres()
            await asyncio.to_thread(scratch.start)
            log(f"PostgreSQL: a scratch cluster of this run on 127.0.0.1:{scratch.port}")
        server = PgServer(server_url or (scratch.dsn if scratch else None))
        database = server.database("orch_verify")
        await database.create()
        await asyncio.to_thread(database.migrate)
        token = secrets.token_urlsafe(24)
        gw = Serve(database.dsn, token, folder, workers=2, env=GATEWAY_ENV)
        gw.start()
        await gw.wait_ready(120)
        log(f"gateway: 2 processes on {gw.url}")
        run = Run(dsn=database.dsn, gw=gw, token=token, folder=folder, quick=quick, server=scratch)
        run.worker_key = await worker_key(gw.url, token)
        for name, check in CHECKS:
            log(f"check: {name}")
            t0 = time.monotonic()
            try:
                got = await check(run)
            except Exception as exc:
                traceback.print_exc()
                got = Row(name, "(the check did not finish)", f"{type(exc).__name__}: {str(exc)[:300]}", "FAIL")
            for row in got if isinstance(got, list) else [got]:
                rows.append(row)
                log(f"  {row.result}: {row.guarantee}: {row.figure} ({time.monotonic() - t0:.1f} s)")
        return rows
    finally:
        if gw is not None:
            await gw.stop()
        if server is not None:
            await server.drop_all()
        if scratch is not None:
            await asyncio.to_thread(scratch.stop)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def stopped(sig: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(sig).name)

    signal.signal(signal.SIGTERM, stopped)
    t0 = time.monotonic()
    try:
        rows = asyncio.run(_run(args.quick, args.database_url))
    except KeyboardInterrupt:
        print("verify: interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            CHILDREN.kill_all()
    print(render(rows))
    failed = [r for r in rows if r.result == "FAIL"]
    print(
        f"\n{len(rows) - len(failed)} of {len(rows)} guarantees hold ({time.monotonic() - t0:.0f} s)"
        + (f"; FAILED: {', '.join(r.guarantee for r in failed)}" if failed else "")
    )
    return 1 if failed else 0
