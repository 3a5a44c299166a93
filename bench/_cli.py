"""`python -m bench`: run the measurements, print a table, save JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import msgspec

from ._config import OPTIONAL_PHASES, PHASES, Config, quick
from ._infra import CHILDREN, BenchError, PgServer
from ._protocol import loop_factory
from ._report import Result, load, machine_info, median_of, render, save, targets, timestamp
from ._run import run
from ._session import Session, log

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure submit→start latency, submit and drain throughput, both on a large table and with many "
        "tenants, and the console's page times. "
        "Starts its own PostgreSQL (or uses DATABASE_URL), gateway processes and workers on loopback.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller run of everything, in under a minute")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="PostgreSQL server to create the run's database on (default: $DATABASE_URL, else an embedded one)",
    )
    p.add_argument(
        "--phases",
        help=f"comma-separated, of {', '.join(PHASES + OPTIONAL_PHASES)} (default: all but "
        f"{', '.join(OPTIONAL_PHASES)}; with --compare: none of them)",
    )
    p.add_argument(
        "--compare",
        choices=["pgqueuer"],
        help="measure pgqueuer and the orchestrator alternately, same protocol, same PostgreSQL (see docs/benchmarks.md)",
    )
    p.add_argument("--rounds", type=int, default=1, help="--compare: rounds to alternate; medians are reported")
    # One per two cores: PostgreSQL and the workers need the rest (on 2 cores, one process used a
    # quarter less CPU per job than two, for the same drain and a lower latency).
    p.add_argument("--gateway-workers", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="gateway processes")
    p.add_argument("--tenants", type=int, default=d.tenants)
    g = p.add_argument_group("latency")
    g.add_argument("--rate", type=float, default=d.rate, help="jobs per second, submitted one at a time")
    g.add_argument("--latency-seconds", type=float, help=f"default {d.latency_seconds:g} (quick: 3)")
    g.add_argument("--latency-workers", type=int, default=d.latency_workers, help="idle worker processes")
    g.add_argument("--latency-concurrency", type=int, default=d.latency_concurrency, help="per worker")
    g.add_argument("--parked-polls", type=int, default=d.parked_polls, help="memory: long-polls parked at once")
    g.add_argument("--safety-poll", type=float, help="ORCH_SAFETY_POLL_SECONDS for the gateways (default: theirs, 5 s)")
    g = p.add_argument_group("throughput")
    g.add_argument("--jobs", type=int, help=f"default {d.jobs:,} (quick: 5,000)")
    g.add_argument("--batch", type=int, default=d.batch, help="jobs per POST /v1/jobs/batch")
    g.add_argument("--submitters", type=int, default=d.submitters, help="concurrent batch submits")
    g.add_argument("--drain-workers", type=int, default=d.drain_workers, help="worker processes")
    g.add_argument("--drain-runners", type=int, default=d.drain_runners, help="WorkerRunners per process")
    g.add_argument("--drain-concurrency", type=int, default=d.drain_concurrency, help="per runner (at most 100)")
    g.add_argument(
        "--burst",
        action="store_true",
        help="drain without the ANALYZE that otherwise precedes it (plans cached while the table was small)",
    )
    g = p.add_argument_group(
        "scale",
        "latency, lease round trip and drain again on a large table, against the empty table; then the "
        "fair-share pick and the lease with many tenants holding work, against a few. The ui phase "
        "reuses the same table (seeded once when both run).",
    )
    g.add_argument("--leases", type=int, help=f"sequential leases timed (default {d.leases}, quick: 200)")
    g.add_argument(
        "--scale-rows",
        "--scale-finished",
        dest="scale_rows",
        type=int,
        metavar="N",
        help=f"finished jobs inserted (default {d.scale_rows:,}, quick: 100,000; 10,000,000 is the full-size run: "
        "about 8 minutes of seeding on 2 busy cores)",
    )
    g.add_argument(
        "--scale-waiting", type=int, help=f"waiting jobs inserted (default {d.scale_waiting:,}, quick: 10,000)"
    )
    g.add_argument(
        "--scale-tenants",
        type=int,
        metavar="N",
        help=f"tenants with work waiting (default {d.scale_tenants:,}, quick: 1,000), against --scale-tenants-base",
    )
    g.add_argument(
        "--scale-tenants-base",
        type=int,
        metavar="N",
        default=d.scale_tenants_base,
        help="the few tenants compared with",
    )
    g.add_argument(
        "--scale-drains",
        type=int,
        metavar="N",
        help=f"drains timed on the empty table and on the loaded one, each; the ratio is of their medians "
        f"(default {d.scale_drains}, quick: 1): a drain lasts seconds, and one is a single draw of a noisy machine",
    )
    g.add_argument(
        "--seed-connections",
        type=int,
        metavar="N",
        default=d.seed_connections,
        help="connections inserting the rows at once",
    )
    g = p.add_argument_group("ui", "the console's pages, signed in, on the scale phase's table")
    g.add_argument("--ui-requests", type=int, metavar="N", default=d.ui_requests, help="timed GETs per page")
    g = p.add_argument_group("soak")
    g.add_argument("--soak-seconds", type=float, default=d.soak_seconds, help="how long the steady load runs")
    g.add_argument("--soak-rate", type=float, default=d.soak_rate, help="jobs per second submitted (and drained)")
    g.add_argument(
        "--soak-retain",
        type=int,
        default=d.soak_retain_seconds,
        help="seconds finished jobs and events are kept (ORCH_RETAIN_SUCCEEDED_SECONDS, ORCH_EVENT_RETENTION_SECONDS)",
    )
    g.add_argument("--soak-workers", type=int, default=d.soak_workers, help="worker processes (concurrency 100 each)")
    g.add_argument(
        "--soak-naptime",
        type=int,
        default=d.soak_naptime_seconds,
        metavar="S",
        help="autovacuum_naptime set on the embedded server the bench started (0: left as it is; an external "
        "server's is never changed)",
    )
    p.add_argument("--profile", action="store_true", help="record the drain with py-spy (when installed)")
    p.add_argument(
        "--db-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the run's database (ALTER DATABASE … SET), e.g. synchronous_commit=off",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument(
        "--median", nargs="+", type=Path, metavar="JSON", help="print the medians of saved runs instead of running"
    )
    return p


def _config(args: argparse.Namespace) -> Config:
    if args.phases is None:
        phases = () if args.compare else PHASES
    else:
        phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    unknown = set(phases) - set(PHASES + OPTIONAL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if not 1 <= args.drain_concurrency <= 100:
        raise SystemExit("--drain-concurrency must be 1..100 (a lease asks for at most 100 jobs)")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.scale_drains is not None and args.scale_drains < 1:
        raise SystemExit("--scale-drains must be at least 1")
    for name in ("scale_rows", "scale_waiting", "scale_tenants"):
        if (getattr(args, name) or 0) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must not be negative")
    if args.scale_tenants_base < 1 or args.seed_connections < 1 or args.ui_requests < 1:
        raise SystemExit("--scale-tenants-base, --seed-connections and --ui-requests must be at least 1")
    for setting in args.db_setting:
        name, sep, _ = setting.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
            raise SystemExit(f"--db-setting wants NAME=VALUE, got {setting!r}")
    base = Config(
        phases=phases,
        gateway_workers=args.gateway_workers,
        tenants=args.tenants,
        rate=args.rate,
        latency_workers=args.latency_workers,
        latency_concurrency=args.latency_concurrency,
        safety_poll_seconds=args.safety_poll,
        parked_polls=args.parked_polls,
        batch=args.batch,
        submitters=args.submitters,
        drain_workers=args.drain_workers,
        drain_runners=args.drain_runners,
        drain_concurrency=args.drain_concurrency,
        profile=args.profile,
        db_settings=tuple(args.db_setting),
        burst=args.burst,
        soak_seconds=args.soak_seconds,
        soak_rate=args.soak_rate,
        soak_retain_seconds=args.soak_retain,
        soak_workers=args.soak_workers,
        soak_naptime_seconds=args.soak_naptime,
        scale_tenants_base=args.scale_tenants_base,
        seed_connections=args.seed_connections,
        ui_requests=args.ui_requests,
    )
    cfg = quick(base) if args.quick else base
    sizes = {
        "latency_seconds": args.latency_seconds,
        "jobs": args.jobs,
        "leases": args.leases,
        "scale_rows": args.scale_rows,
        "scale_waiting": args.scale_waiting,
        "scale_tenants": args.scale_tenants,
        "scale_drains": args.scale_drains,
    }
    return msgspec.structs.replace(cfg, **{k: v for k, v in sizes.items() if v is not None})


def _render(result: Result) -> str:
    text = render(result)
    if result.get("compare"):
        from ._compare import render_compare

        text += "\n" + render_compare(result["compare"])
    return text


def _median(paths: list[Path]) -> int:
    runs = [load(p) for p in paths]
    result: Result = median_of(runs)
    result["runs"] = len(runs)
    compares = [r["compare"] for r in runs if r.get("compare")]
    if compares:
        from ._compare import SYSTEMS, summarise

        # Medians over every round of every run, not a median of medians.
        rounds = {system: [x for c in compares for x in c.get("runs", {}).get(system, [])] for system in SYSTEMS}
        result["compare"].update(rounds=sum(len(x) for x in rounds.values()) // len(SYSTEMS), **summarise(rounds))
    print(_render(result))
    return 0


async def _session(session: Session) -> Result:
    try:
        return await run(session)
    finally:
        await asyncio.shield(session.teardown())


async def _all(cfg: Config, args: argparse.Namespace, server: PgServer, stamp: str) -> Result:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    out: Result = {}
    try:
        if cfg.phases:
            out.update(await _session(Session(cfg, server.database(), args.results_dir, stamp)))
        if args.compare:
            from ._compare import compare

            out["compare"] = await compare(server, cfg, args.rounds, args.results_dir, stamp)
            out.setdefault("postgres", out["compare"]["postgres"])
        return out
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.median:
        return _median(args.median)
    cfg = _config(args)
    stamp = timestamp()
    result: Result = {
        "started_at": stamp,
        "command": ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "config": msgspec.to_builtins(cfg),
        "machine": machine_info(),
    }
    t0 = time.monotonic()
    server: PgServer | None = None
    try:
        server = PgServer(args.database_url)
        result["database"] = server.kind
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result.update(runner.run(_all(cfg, args, server, stamp)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: stopped everything the bench started")
        return 130
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    except Exception:
        log("failed:\n" + traceback.format_exc())
        return 1
    finally:
        CHILDREN.kill_all()
        if server is not None:
            with contextlib.suppress(Exception):
                asyncio.run(server.drop_all())
            server.stop()
    result["seconds"] = time.monotonic() - t0
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["targets"] = targets(result)
    print(_render(result))
    if not args.no_save:
        path = save(result, args.results_dir, stamp)
        log(f"saved {path} ({result['seconds']:.0f} s)")
    return 0
