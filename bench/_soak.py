"""Soak phase: a steady load of submits and drains for minutes, finished jobs and events kept for
seconds only, and what the tables, their indexes, their dead tuples, the WAL and the latency do
meanwhile; with a verdict on whether sizes and latency stayed flat once the retention period and
the autovacuum cycles the tables need to reach their working size had passed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from typing import Any

import asyncpg

import db
from core.wire import JobSubmit

from ._cpu import CpuMeter, per_job_ms
from ._infra import BenchError, start_agents, stop_agents, stop_agents_hard
from ._report import Result, summary_ms
from ._session import Session, check, log

TICK_S = 0.1  # the load is submitted as one batch per tick
SAMPLE_EVERY_S = 5.0
MAX_BATCHES_IN_FLIGHT = 8
# Flat: at most this much above the reference, or within the floor (a few pages, a few ms), so
# that a table of one page growing to two or a 2 ms p50 becoming 3 ms is not called bloat.
FLAT_RATIO = 1.20
SIZE_FLOOR_BYTES = 64 * 1024
LATENCY_FLOOR_MS = 5.0
# The reference is this many autovacuum_naptime after the retention period: the first vacuum
# after retention starts deleting comes within one naptime, the first whole cycle of retention's
# deletes ends one naptime later, and the index pages that cycle's vacuum deletes are reusable
# only once the next vacuum has seen them (its log: "newly deleted", then "reusable").
REFERENCE_CYCLES = 3
# ...and no earlier than this: the first 20 s carry the start (worker processes connecting, the
# first batches queued behind them), with live rows and latency not yet at their level.
WARMUP_S = 30.0
# Latency is judged over this long at the reference and at the end (at most a third of the time
# between them): a 20 s window's p99 is its 200 slowest jobs, which one stall of a few hundred
# milliseconds decides on its own.
VERDICT_WINDOW_S = 60.0
# A table whose live rows more than doubled keeps rows longer than the run (request nonces, for
# the replay window): growth by design, not bloat.
FILLING_RATIO = 2.0
SIZE_SPAN_CYCLES = 2
SERIES_WINDOW_NS = 20 * 10**9
# What an operator sets server-wide for autovacuum, recorded with the run.
SERVER_SETTINGS = (
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_max_workers",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_work_mem",
    "maintenance_work_mem",
)

_TABLES = """
SELECT relname AS table, n_live_tup AS live, n_dead_tup AS dead,
       n_tup_ins AS ins, n_tup_upd AS upd, n_tup_hot_upd AS hot_upd, n_tup_del AS del,
       pg_relation_size(relid) AS table_bytes, pg_indexes_size(relid) AS index_bytes,
       autovacuum_count AS autovacuums, autoanalyze_count AS autoanalyzes,
       coalesce((extract(epoch FROM last_autovacuum) * 1000)::bigint, 0) AS last_autovacuum_ms
  FROM pg_stat_user_tables ORDER BY relname
"""
_INDEXES = """
SELECT relname AS table, indexrelname AS index, pg_relation_size(indexrelid) AS bytes
  FROM pg_stat_user_indexes ORDER BY relname, indexrelname
"""
_RELOPTIONS = """
SELECT c.relname, c.reloptions FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.reloptions IS NOT NULL
 ORDER BY c.relname
"""
_SETTINGS = "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name"
_NAPTIME_S = "SELECT setting::int FROM pg_settings WHERE name = 'autovacuum_naptime'"
_WAL = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# The soak's own jobs only: an earlier phase of the run may leave jobs no worker serves.
_UNFINISHED = "SELECT count(*) FROM jobs WHERE id > $1 AND state IN ('ready', 'running', 'scheduled')"
_LAST_ID = "SELECT coalesce(max(id), 0) FROM jobs"


async def _sample(s: Session, t0: float, submitted: int, after_id: int) -> Result:
    tables: dict[str, Result] = {
        r["table"]: {k: int(v) for k, v in dict(r).items() if k != "table"} for r in await s.conn.fetch(_TABLES)
    }
    for r in await s.conn.fetch(_INDEXES):
        tables[r["table"]].setdefault("indexes", {})[r["index"]] = int(r["bytes"])
    return {
        "at_s": round(time.monotonic() - t0, 1),
        "submitted": submitted,
        "wal_bytes": int(await s.conn.fetchval(_WAL)),
        "unfinished": int(await s.conn.fetchval(_UNFINISHED, after_id)),
        "tables": tables,
    }


def _window(starts_ns: list[int], latencies_ns: list[int], lo_ns: int, hi_ns: int) -> Result:
    return summary_ms([lat / 1e6 for st, lat in zip(starts_ns, latencies_ns, strict=True) if lo_ns <= st < hi_ns])


async def _settings(conn: asyncpg.Connection) -> dict[str, str]:
    return {r["name"]: r["setting"] + (r["unit"] or "") for r in await conn.fetch(_SETTINGS, list(SERVER_SETTINGS))}


async def _set_naptime(s: Session, seconds: int | None) -> None:
    """`autovacuum_naptime` on the embedded server the bench started (a server-wide setting, so
    ALTER SYSTEM and a reload; None resets it). An external server is never changed."""
    server = await db.connect(s.database.server.dsn, application_name="orchestrator-bench")
    try:
        if seconds is None:
            await server.execute("ALTER SYSTEM RESET autovacuum_naptime")
        else:
            await server.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{int(seconds)}s'")
        await server.execute("SELECT pg_reload_conf()")
    finally:
        await server.close()
    if seconds is None:
        return
    # The reload is asynchronous: wait until a backend sees it.
    deadline = time.monotonic() + 10
    while await s.conn.fetchval(_NAPTIME_S) != seconds:
        if time.monotonic() > deadline:
            raise BenchError("soak: the server did not take autovacuum_naptime within 10 s of a reload")
        await asyncio.sleep(0.1)


def _busy(first: Result, last: Result, seconds: float) -> list[str]:
    """Tables the load changed at least one row a second of."""

    def changes(t: Result) -> int:
        return int(t["ins"] + t["upd"] + t["del"])

    return [
        name
        for name, b in last["tables"].items()
        if name in first["tables"] and changes(b) - changes(first["tables"][name]) >= max(1.0, seconds)
    ]


def _vacuum_intervals(samples: list[Result], busy: list[str]) -> dict[str, Result]:
    """Seconds between the autovacuums of each busy table, as far as samples tell them apart: an
    index keeps the size the longest interval needed."""
    out: dict[str, Result] = {}
    for name in busy:
        ends = sorted({x["tables"][name]["last_autovacuum_ms"] for x in samples if name in x["tables"]} - {0})
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(ends)]
        if gaps:
            out[name] = {"n": len(gaps), "median_s": sorted(gaps)[len(gaps) // 2], "max_s": max(gaps)}
    return out


def _flat(ref: float, end: float, floor: float) -> bool:
    return end <= ref * FLAT_RATIO or end - ref <= floor


def _filling(a: Result, b: Result) -> bool:
    """Whether a table's live rows grew past FILLING_RATIO: rows kept longer than the run."""
    return bool(b["live"] > a["live"] * FILLING_RATIO and b["live"] - a["live"] > 100)


def _sizes(samples: list[Result], at_s: float, span_s: float, table: str) -> dict[str, int]:
    """A table's and its indexes' sizes at `at_s`: the largest sampled in the `span_s` ending
    there, since a vacuum truncates a heap's empty tail and the load takes a cycle or two to
    regrow it (an index never shrinks, so for it this is the size at `at_s`)."""
    out: dict[str, int] = {}
    for x in samples:
        if at_s - span_s < x["at_s"] <= at_s and table in x["tables"]:
            t = x["tables"][table]
            for rel, n in {table: t["table_bytes"], **t.get("indexes", {})}.items():
                out[rel] = max(out.get(rel, 0), n)
    return out


def _verdict(
    samples: list[Result],
    points: tuple[Result, Result, Result],
    cycle_s: float,
    busy: list[str],
    lat_ref: Result,
    lat_end: Result,
    *,
    during_load: bool,
) -> Result:
    """Sizes and latency at the end against the reference; the size at mid-way is there to tell a
    table that grew to its working size and stayed (end / mid near 1) from one still growing."""
    ref, _, end = points
    sizes: list[Result] = []
    filling = [name for name in busy if _filling(ref["tables"][name], end["tables"][name])]
    for name in busy:
        if name in filling:
            continue
        a, m, b = (_sizes(samples, p["at_s"], SIZE_SPAN_CYCLES * cycle_s, name) for p in points)
        for rel, y in b.items():
            x = a.get(rel, 0)
            sizes.append(
                {
                    "relation": rel,
                    "kind": "table" if rel == name else f"index on {name}",
                    "ref_bytes": x,
                    "mid_bytes": m.get(rel, 0),
                    "end_bytes": y,
                    "ratio": y / x if x else None,
                    "flat": _flat(x, y, SIZE_FLOOR_BYTES),
                    "flat_since_mid": _flat(m.get(rel, 0), y, SIZE_FLOOR_BYTES),
                }
            )
    latency: list[Result] = []
    for key in ("p50_ms", "p99_ms"):
        x, y = lat_ref[key], lat_end[key]
        ok = not (math.isnan(x) or math.isnan(y)) and _flat(x, y, LATENCY_FLOOR_MS)  # no jobs in a window fails
        latency.append({"figure": key, "ref_ms": x, "end_ms": y, "ratio": y / x if x else None, "flat": ok})
    sizes_flat = all(x["flat"] for x in sizes)
    latency_flat = all(x["flat"] for x in latency)
    return {
        "rule": (
            f"flat: at the end at most {FLAT_RATIO - 1:.0%} above the reference, or at most "
            f"{SIZE_FLOOR_BYTES // 1024} kB / {LATENCY_FLOOR_MS:g} ms above it; a size is the largest "
            f"sampled in the {SIZE_SPAN_CYCLES} autovacuum cycles ({SIZE_SPAN_CYCLES * cycle_s:g} s) ending at the point"
        ),
        "sizes": sizes,
        "filling": filling,
        "latency": latency,
        "sizes_flat": sizes_flat,
        "sizes_flat_since_mid": all(x["flat_since_mid"] for x in sizes),
        "latency_flat": latency_flat,
        # A run too short to reach the reference has nothing to compare.
        "flat": during_load and sizes_flat and latency_flat,
    }


async def soak(s: Session) -> Result:
    cfg = s.cfg
    retain = str(cfg.soak_retain_seconds)
    per_tick = max(1, round(cfg.soak_rate * TICK_S))
    log(
        f"soak: {cfg.soak_seconds:g} s at {per_tick / TICK_S:g} jobs/s, finished jobs and events kept {retain} s, "
        f"{cfg.soak_workers} worker process(es)"
    )
    naptime_set = False
    if s.database.kind == "embedded" and cfg.soak_naptime_seconds > 0:
        await _set_naptime(s, cfg.soak_naptime_seconds)
        naptime_set = True
    try:
        return await _soak(s, per_tick, retain, naptime_set)
    finally:
        if naptime_set:
            with contextlib.suppress(Exception):
                await _set_naptime(s, None)


async def _soak(s: Session, per_tick: int, retain: str, naptime_set: bool) -> Result:
    cfg = s.cfg
    settings = await _settings(s.conn)
    naptime_s = int(await s.conn.fetchval(_NAPTIME_S))
    reloptions = {r["relname"]: list(r["reloptions"]) for r in await s.conn.fetch(_RELOPTIONS)}
    how = "set by the bench on its own server" if naptime_set else f"the {s.database.kind} server's, left as it is"
    log("soak: server-wide " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + f" (autovacuum_naptime {how})")
    log(
        "soak: per-table "
        + ("; ".join(f"{t}: {', '.join(o)}" for t, o in reloptions.items()) or "none: the server's defaults")
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
        after_id = int(await s.conn.fetchval(_LAST_ID))
        t0 = time.monotonic()
        wall0 = time.time_ns()
        before = s.cpu.sample()
        samples.append(await _sample(s, t0, 0, after_id))
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
                samples.append(await _sample(s, t0, submitted, after_id))
                next_sample += SAMPLE_EVERY_S
            if len(errors) > 10:
                raise BenchError(f"soak: submits failing: {errors[-1]}")
        await asyncio.gather(*tasks)
        wall1 = time.time_ns()
        samples.append(await _sample(s, t0, submitted, after_id))  # the last under load
        deadline = time.monotonic() + 60
        while await s.conn.fetchval(_UNFINISHED, after_id):
            if time.monotonic() > deadline:
                raise BenchError("soak: jobs still unfinished 60 s after the load stopped")
            await asyncio.sleep(0.2)
        after = s.cpu.sample()
        drained = await _sample(s, t0, submitted, after_id)
    except BaseException:
        for t in tasks:
            t.cancel()
        await stop_agents_hard(agents)
        raise
    reports = await stop_agents(agents)
    check(reports)
    starts = [t for r in reports for t in r.starts_ns]
    lats = [t for r in reports for t in r.latencies_ns]
    seconds = (wall1 - wall0) / 1e9
    # Windows of a sixth of the run, at most 20 s: the first after a warm-up of the same length.
    window = int(min(20.0, cfg.soak_seconds / 6) * 1e9)
    ref_after_s = max(WARMUP_S, cfg.soak_retain_seconds + REFERENCE_CYCLES * naptime_s)
    last = samples[-1]
    ref = next((x for x in samples if x["at_s"] >= ref_after_s), last)
    ref_ns = wall0 + int(ref["at_s"] * 1e9)
    judged = max(window, int(min(VERDICT_WINDOW_S * 1e9, (wall1 - ref_ns) / 3)))
    busy = _busy(samples[0], last, seconds)
    out: Result = {
        "seconds": seconds,
        "rate": per_tick / TICK_S,
        "submitted": submitted,
        "rate_achieved": submitted / seconds,
        "late_ticks": late,
        "retain_s": cfg.soak_retain_seconds,
        "workers": cfg.soak_workers,
        "server_settings": settings,
        "naptime_s": naptime_s,
        "naptime_set_by_bench": naptime_set,
        "reloptions": reloptions,
        "reference": {
            "rule": (
                f"the first sample at or after retention + {REFERENCE_CYCLES} x autovacuum_naptime "
                f"({cfg.soak_retain_seconds} + {REFERENCE_CYCLES} x {naptime_s} s), and no earlier than "
                f"{WARMUP_S:g} s: {ref_after_s:g} s"
            ),
            "latency_window_s": judged / 1e9,
            "after_s": ref_after_s,
            "at_s": ref["at_s"],
            "during_load": ref is not last,
        },
        "latency_start": _window(starts, lats, wall0 + window, wall0 + 2 * window),
        "latency_reference": _window(starts, lats, ref_ns, ref_ns + judged),
        "latency_end": _window(starts, lats, wall1 - judged, wall1),
        "latency_all": summary_ms([x / 1e6 for x in lats]),
        # Consecutive windows over the whole run, to tell a trend from a crowded moment.
        "latency_series": [
            {"from_s": (lo - wall0) / 1e9, **_window(starts, lats, lo, lo + SERIES_WINDOW_NS)}
            for lo in range(wall0, wall1, SERIES_WINDOW_NS)
        ],
        "handled": sum(r.handled for r in reports),
        "start": samples[1] if len(samples) > 2 else samples[0],
        "ref": ref,
        "end": last,
        "drained": drained,
        "busy_tables": busy,
        "autovacuum_intervals": _vacuum_intervals(samples, busy),
        "hot_update_share": {
            name: (last["tables"][name]["hot_upd"] - samples[0]["tables"][name]["hot_upd"]) / du
            for name in busy
            if (du := last["tables"][name]["upd"] - samples[0]["tables"][name]["upd"]) > 0
        },
        "wal_bytes_per_job": (last["wal_bytes"] - samples[0]["wal_bytes"]) / max(1, submitted),
        "cpu_cores": CpuMeter.cores(before, after),
        "cpu_ms_per_job": per_job_ms(before, after, max(1, submitted)),
        "samples": samples,
    }
    mid = next(x for x in samples if x["at_s"] >= (ref["at_s"] + last["at_s"]) / 2)
    out["mid"] = mid
    out["verdict"] = _verdict(
        samples,
        (ref, mid, last),
        naptime_s,
        busy,
        out["latency_reference"],
        out["latency_end"],
        during_load=ref is not last,
    )
    if errors:
        out["submit_errors"] = errors[:10]
    lr, le, v = out["latency_reference"], out["latency_end"], out["verdict"]
    log(
        f"soak: {submitted:,} jobs in {seconds:.0f} s ({out['rate_achieved']:,.0f}/s); submit → start p50 "
        f"{lr['p50_ms']:.1f} → {le['p50_ms']:.1f} ms, p99 {lr['p99_ms']:.1f} → {le['p99_ms']:.1f} ms from the "
        f"reference at {ref['at_s']:g} s to the end; {_verdict_text(v, ref is not last)}; "
        f"WAL {out['wal_bytes_per_job']:,.0f} bytes per job"
    )
    return out


def _verdict_text(v: Result, during_load: bool) -> str:
    if not during_load:
        return "verdict: none, the load ended before the reference point"

    def word(ok: bool) -> str:
        return "flat" if ok else "NOT flat"

    return (
        f"verdict: sizes {word(v['sizes_flat'])}, latency {word(v['latency_flat'])}; "
        f"sizes from mid-way to the end {word(v['sizes_flat_since_mid'])}"
    )


def _size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def soak_lines(so: dict[str, Any]) -> list[str]:
    """The soak's figures as text, for the report."""
    from ._report import _fmt, table

    out = [
        f"soak: {so['submitted']:,} jobs in {so['seconds']:.0f} s ({so['rate_achieved']:,.0f}/s of "
        f"{so['rate']:g}/s asked, {so['late_ticks']} late ticks), finished jobs and events kept {so['retain_s']} s, "
        f"{so['workers']} worker process(es); WAL {so['wal_bytes_per_job']:,.0f} bytes per job"
    ]
    settings = so.get("server_settings")
    if settings:
        who = "set by the bench" if so.get("naptime_set_by_bench") else "the server's own"
        out.append("    server: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + f" (naptime {who})")
        for name, opts in (so.get("reloptions") or {}).items():
            out.append(f"    {name}: {', '.join(opts)}")
    ref = so.get("ref")
    if ref is None:  # a run from before the reference point
        ref = so["start"]
    else:
        r = so["reference"]
        out.append(
            f"    reference: {r['rule']}, at {r['at_s']:g} s"
            + ("" if r["during_load"] else " (the run was shorter than that: no verdict)")
        )
    lr = so.get("latency_reference", so["latency_start"])
    span = (so.get("reference") or {}).get("latency_window_s")
    out.append(
        table(
            [
                f"submit → start, {span:.0f} s" if span else "submit → start",
                "jobs",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
            ],
            [
                [label, str(w["n"]), *(_fmt(w[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))]
                for label, w in (("reference", lr), ("end", so["latency_end"]))
            ],
        )
    )
    end = so["end"]
    hot = so.get("hot_update_share", {})
    rows = []
    for name in so.get("busy_tables") or sorted(ref["tables"]):
        a, b = ref["tables"].get(name), end["tables"].get(name)
        if a is None or b is None:
            continue
        rows.append(
            [
                name,
                f"{_size(a['table_bytes'])} → {_size(b['table_bytes'])}",
                f"{_size(a['index_bytes'])} → {_size(b['index_bytes'])}",
                f"{a['live']:,} → {b['live']:,}",
                f"{a['dead']:,} → {b['dead']:,}",
                f"{b['autovacuums'] - a['autovacuums']}",
                f"{hot[name]:.0%}" if name in hot else "-",
            ]
        )
    out.append(
        table(
            [
                f"at {ref['at_s']:g} s → {end['at_s']:g} s",
                "table",
                "indexes",
                "live rows",
                "dead rows",
                "autovacuums",
                "HOT updates",
            ],
            rows,
        )
    )
    gaps = so.get("autovacuum_intervals") or {}
    if gaps:
        out.append(
            "    autovacuum every (median / longest, s): "
            + ", ".join(f"{name} {g['median_s']:.1f} / {g['max_s']:.1f}" for name, g in gaps.items())
        )
    v = so.get("verdict")
    if v:
        out.append(f"    {v['rule']}")
        out.append(
            table(
                [
                    "relation",
                    f"at {ref['at_s']:g} s",
                    f"at {so['mid']['at_s']:g} s",
                    f"at {end['at_s']:g} s",
                    "end / ref",
                    "flat",
                    "end / mid",
                ],
                [
                    [
                        x["relation"] if x["kind"] == "table" else "  " + x["relation"],
                        _size(x["ref_bytes"]),
                        _size(x["mid_bytes"]),
                        _size(x["end_bytes"]),
                        _fmt(x["ratio"]),
                        "yes" if x["flat"] else "NO",
                        _fmt(x["end_bytes"] / x["mid_bytes"] if x["mid_bytes"] else None),
                    ]
                    for x in v["sizes"]
                ]
                + [
                    [
                        f"submit → start {x['figure'][:3]} ms",
                        _fmt(x["ref_ms"]),
                        "",
                        _fmt(x["end_ms"]),
                        _fmt(x["ratio"]),
                        "yes" if x["flat"] else "NO",
                        "",
                    ]
                    for x in v["latency"]
                ],
            )
        )
        for name in v.get("filling", []):
            a, b = ref["tables"][name], end["tables"][name]
            out.append(
                f"    {name}: not judged, its live rows grew {a['live']:,} → {b['live']:,} (kept longer than the run)"
            )
        series = so.get("latency_series") or []
        if series:
            out.append(
                f"    submit → start by {SERIES_WINDOW_NS // 10**9} s window, p50 / p99 ms: "
                + ", ".join(f"{w['p50_ms']:.0f} / {w['p99_ms']:.0f}" for w in series if w["n"])
            )
        out.append("    " + _verdict_text(v, so["reference"]["during_load"]))
    return out
