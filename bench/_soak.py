"""Soak phase: a steady load of submits and drains for minutes, finished jobs and events kept for
seconds only, and what the tables, their dead tuples, the WAL and the latency do meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from core.wire import JobSubmit

from ._cpu import CpuMeter, per_job_ms
from ._infra import BenchError, start_agents, stop_agents, stop_agents_hard
from ._report import Result, summary_ms
from ._session import Session, check, log

TICK_S = 0.1  # the load is submitted as one batch per tick
SAMPLE_EVERY_S = 10.0
MAX_BATCHES_IN_FLIGHT = 8
TABLES = ("jobs", "events", "request_nonces", "runnable_queues", "tenants")

_TABLES = """
SELECT relname AS table, n_live_tup AS live, n_dead_tup AS dead,
       pg_relation_size(relid) AS table_bytes, pg_indexes_size(relid) AS index_bytes,
       autovacuum_count AS autovacuums, autoanalyze_count AS autoanalyzes
  FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) ORDER BY relname
"""
_WAL = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
_UNFINISHED = "SELECT count(*) FROM jobs WHERE state IN ('ready', 'running', 'scheduled')"


async def _sample(s: Session, t0: float, submitted: int) -> Result:
    rows = await s.conn.fetch(_TABLES, list(TABLES))
    return {
        "at_s": round(time.monotonic() - t0, 1),
        "submitted": submitted,
        "wal_bytes": int(await s.conn.fetchval(_WAL)),
        "unfinished": int(await s.conn.fetchval(_UNFINISHED)),
        "tables": {r["table"]: {k: int(v) for k, v in dict(r).items() if k != "table"} for r in rows},
    }


def _window(starts_ns: list[int], latencies_ns: list[int], lo_ns: int, hi_ns: int) -> Result:
    return summary_ms([lat / 1e6 for st, lat in zip(starts_ns, latencies_ns, strict=True) if lo_ns <= st < hi_ns])


async def soak(s: Session) -> Result:
    cfg = s.cfg
    retain = str(cfg.soak_retain_seconds)
    per_tick = max(1, round(cfg.soak_rate * TICK_S))
    log(
        f"soak: {cfg.soak_seconds:g} s at {per_tick / TICK_S:g} jobs/s, finished jobs and events kept {retain} s, "
        f"{cfg.soak_workers} worker process(es)"
    )
    await s.start_gateway(
        notifier=True,
        env={
            "ORCH_RETAIN_SUCCEEDED_SECONDS": retain,
            "ORCH_JOB_PRUNE_INTERVAL_SECONDS": "1",
            "ORCH_EVENT_RETENTION_SECONDS": retain,
            "ORCH_EVENT_PRUNE_INTERVAL_SECONDS": "1",
        },
    )
    agents = await start_agents([s.agent(f"soak-{i}", "latency", concurrency=100) for i in range(cfg.soak_workers)])
    loop = asyncio.get_running_loop()
    producers = s.producers
    in_flight = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
    submitted = 0
    late = 0  # ticks skipped because the batches before them had not been answered
    errors: list[str] = []

    async def submit(b: int) -> None:
        nonlocal submitted
        try:
            now = time.time_ns()
            jobs = [JobSubmit(payload={"t": now}) for _ in range(per_tick)]
            await producers[b % len(producers)].submit_many(jobs)
            submitted += per_tick
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            in_flight.release()

    samples: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    try:
        s.watch(agents)
        for a in agents:
            a.go()
        t0 = time.monotonic()
        wall0 = time.time_ns()
        before = s.cpu.sample()
        samples.append(await _sample(s, t0, 0))
        next_sample = t0 + SAMPLE_EVERY_S
        start = loop.time()
        ticks = round(cfg.soak_seconds / TICK_S)
        for b in range(ticks):
            delay = start + b * TICK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight.locked():
                late += 1
                continue
            await in_flight.acquire()
            task = asyncio.create_task(submit(b))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_sample:
                samples.append(await _sample(s, t0, submitted))
                next_sample += SAMPLE_EVERY_S
            if len(errors) > 10:
                raise BenchError(f"soak: submits failing: {errors[-1]}")
        await asyncio.gather(*tasks)
        wall1 = time.time_ns()
        deadline = time.monotonic() + 60
        while await s.conn.fetchval(_UNFINISHED):
            if time.monotonic() > deadline:
                raise BenchError("soak: jobs still unfinished 60 s after the load stopped")
            await asyncio.sleep(0.2)
        after = s.cpu.sample()
        samples.append(await _sample(s, t0, submitted))
    except BaseException:
        for t in tasks:
            t.cancel()
        await stop_agents_hard(agents)
        raise
    reports = await stop_agents(agents)
    check(reports)
    starts = [t for r in reports for t in r.starts_ns]
    lats = [t for r in reports for t in r.latencies_ns]
    # Windows of a sixth of the run, at most 20 s: the first after a warm-up of the same length.
    window = int(min(20.0, cfg.soak_seconds / 6) * 1e9)
    first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    seconds = (wall1 - wall0) / 1e9
    out: Result = {
        "seconds": seconds,
        "rate": per_tick / TICK_S,
        "submitted": submitted,
        "rate_achieved": submitted / seconds,
        "late_ticks": late,
        "retain_s": cfg.soak_retain_seconds,
        "workers": cfg.soak_workers,
        "latency_start": _window(starts, lats, wall0 + window, wall0 + 2 * window),
        "latency_end": _window(starts, lats, wall1 - window, wall1),
        "latency_all": summary_ms([x / 1e6 for x in lats]),
        "handled": sum(r.handled for r in reports),
        "start": first,
        "end": last,
        "wal_bytes_per_job": (last["wal_bytes"] - samples[0]["wal_bytes"]) / max(1, submitted),
        "cpu_cores": CpuMeter.cores(before, after),
        "cpu_ms_per_job": per_job_ms(before, after, max(1, submitted)),
        "samples": samples,
    }
    if errors:
        out["submit_errors"] = errors[:10]
    ls, le = out["latency_start"], out["latency_end"]
    log(
        f"soak: {submitted:,} jobs in {seconds:.0f} s ({out['rate_achieved']:,.0f}/s); submit → start p50 "
        f"{ls['p50_ms']:.1f} → {le['p50_ms']:.1f} ms, p99 {ls['p99_ms']:.1f} → {le['p99_ms']:.1f} ms; "
        f"WAL {out['wal_bytes_per_job']:,.0f} bytes per job"
    )
    return out


def soak_lines(so: dict[str, Any]) -> list[str]:
    """The soak's figures as text, for the report."""
    from ._report import _fmt, table

    out = [
        f"soak: {so['submitted']:,} jobs in {so['seconds']:.0f} s ({so['rate_achieved']:,.0f}/s of "
        f"{so['rate']:g}/s asked, {so['late_ticks']} late ticks), finished jobs and events kept {so['retain_s']} s, "
        f"{so['workers']} worker process(es); WAL {so['wal_bytes_per_job']:,.0f} bytes per job"
    ]
    ls, le = so["latency_start"], so["latency_end"]
    out.append(
        table(
            ["submit → start", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                [label, str(w["n"]), *(_fmt(w[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))]
                for label, w in (("start", ls), ("end", le))
            ],
        )
    )
    rows = []
    for name in TABLES:
        a, b = so["start"]["tables"].get(name), so["end"]["tables"].get(name)
        if a is None or b is None:
            continue
        rows.append(
            [
                name,
                f"{a['table_bytes'] / 1e6:.1f} → {b['table_bytes'] / 1e6:.1f}",
                f"{a['index_bytes'] / 1e6:.1f} → {b['index_bytes'] / 1e6:.1f}",
                f"{a['live']:,} → {b['live']:,}",
                f"{a['dead']:,} → {b['dead']:,}",
                f"{b['autovacuums'] - a['autovacuums']}",
            ]
        )
    out.append(
        table(
            [
                f"at {so['start']['at_s']:g} s → {so['end']['at_s']:g} s",
                "table MB",
                "indexes MB",
                "live rows",
                "dead rows",
                "autovacuums",
            ],
            rows,
        )
    )
    return out
