"""The scale phase's load: a large jobs table inserted with SQL, then brought to a steady state;
and many tenants with work waiting, for the fair-share pick and the lease."""

from __future__ import annotations

import asyncio
import time

import asyncpg

import db
from core.wire import AckComplete
from sdk import WorkerClient

from ._infra import Admin, BenchError
from ._report import Result, ratios_of, summary_ms
from ._session import Session, log

# Rows per INSERT statement: one transaction each, so a long seed commits as it goes.
SEED_CHUNK = 200_000
# One finished job in this many is dead, so that the dead-letter pages have rows to show.
DEAD_EVERY = 1000
# The finished jobs finished over this span before the seed, well inside the default retention
# of succeeded jobs (a day): the pruner does not delete them while the bench measures.
FINISHED_SPAN_MS = 12 * 3600 * 1000
# The queue of the tenants sub-phase: no other phase's jobs are in it.
FAIR_QUEUE = "fair"
# Ready jobs per tenant added for the many-tenants round: each is leased at most once.
JOBS_PER_TENANT = 2
WARM_LEASES = 20

_SEED_FINISHED = f"""
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, attempts, max_attempts, run_at,
                  created_at, started_at, finished_at, result, last_error, lease_token, worker_id)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'default', 'seed', jsonb_build_object('n', g), 0,
       CASE WHEN g % {DEAD_EVERY} = 0 THEN 'dead' ELSE 'succeeded' END::job_state,
       CASE WHEN g % {DEAD_EVERY} = 0 THEN 5 ELSE 1 END, 5, t.at, t.at, t.at,
       t.at + interval '20 milliseconds',
       CASE WHEN g % {DEAD_EVERY} = 0 THEN NULL ELSE '{{"ok": true}}'::jsonb END,
       CASE WHEN g % {DEAD_EVERY} = 0 THEN 'seed: failed five times' END, g, 'seed-worker'
  FROM generate_series($2::bigint, $3::bigint) AS g
 CROSS JOIN LATERAL (SELECT now() - interval '12 hours' + g * $4::float8 * interval '1 millisecond' AS at) t
"""

_SEED_WAITING = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, max_attempts, run_at, created_at)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], $4, 'seed', jsonb_build_object('n', g), 0,
       'ready', 5, now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series($2::bigint, $3::bigint) AS g
"""

# The fair-share pick a shared lease starts with, in the database (the leasing functions call it);
# its limit is the gateway's CANDIDATES, DEFAULT_CANDIDATES should the gateway not name one.
_PICK = "SELECT id, max_inflight, vpass, lead_pass FROM orch_tenant_pick($1::text[], $2)"
DEFAULT_CANDIDATES = 8

# The columns `POST /v1/admin/tenants` writes (db tenant_insert), with its defaults.
_TENANTS = """
INSERT INTO tenants (id, name, weight, max_inflight)
SELECT 'fair-' || lpad(g::text, $3, '0'), '', 1, NULL FROM generate_series($1::int, $2::int) AS g
"""

# `per` ready jobs for each tenant of the range, in one statement: its trigger records the
# (tenant, queue) pairs in runnable_queues, as a submit does.
_TENANT_JOBS = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, max_attempts, run_at, created_at)
SELECT 'fair-' || lpad(g::text, $3, '0'), $5, 'seed', jsonb_build_object('n', k), 0, 'ready', 5, now(), now()
  FROM generate_series($1::int, $2::int) AS g CROSS JOIN generate_series(1, $4::int) AS k
"""


def _chunks(total: int, first: int = 1) -> list[tuple[int, int]]:
    return [
        (start, min(first + total - 1, start + SEED_CHUNK - 1)) for start in range(first, first + total, SEED_CHUNK)
    ]


async def _insert_all(s: Session, work: list[tuple[str, tuple[object, ...], int]]) -> None:
    """Run the statements over `seed_connections` connections at once, logging progress."""
    total = sum(rows for _, _, rows in work)
    queue = list(reversed(work))
    done = 0
    t0 = time.perf_counter()
    next_note = t0 + 30

    async def inserter(conn: asyncpg.Connection) -> None:
        nonlocal done, next_note
        while queue:
            sql, args, rows = queue.pop()
            await conn.execute(sql, *args, timeout=3600)
            done += rows
            now = time.perf_counter()
            if now >= next_note:
                next_note = now + 30
                log(f"scale: {done:,} of {total:,} rows in {now - t0:.0f} s ({done / (now - t0):,.0f} rows/s)")

    extra = [
        await db.connect(s.database.dsn, application_name="orchestrator-bench")
        for _ in range(min(s.cfg.seed_connections, len(work)) - 1)
    ]
    try:
        await asyncio.gather(*(inserter(c) for c in [s.conn, *extra]))
    finally:
        for c in extra:
            await c.close()


async def seed(s: Session) -> Result:
    """`scale_rows` finished jobs over every tenant (one in DEAD_EVERY dead, the rest succeeded),
    and `scale_waiting` ready ones in a queue no bench worker serves (so they stay waiting),
    inserted with SQL; then VACUUM ANALYZE and a checkpoint."""
    cfg = s.cfg
    admin = Admin(s.url, s.token)
    background = [f"bg-{i:02d}" for i in range(cfg.background_tenants)]
    for tenant_id in background:
        await admin.tenant(tenant_id)
    everyone = [t for t, _ in s.tenants] + background
    log(
        f"scale: inserting {cfg.scale_rows:,} finished and {cfg.scale_waiting:,} waiting jobs over "
        f"{cfg.seed_connections} connection(s)"
    )
    work: list[tuple[str, tuple[object, ...], int]] = [
        (_SEED_FINISHED, (everyone, lo, hi, FINISHED_SPAN_MS / max(1, cfg.scale_rows)), hi - lo + 1)
        for lo, hi in _chunks(cfg.scale_rows)
    ]
    work += [(_SEED_WAITING, (everyone, lo, hi, "backlog"), hi - lo + 1) for lo, hi in _chunks(cfg.scale_waiting)]
    t0 = time.perf_counter()
    await _insert_all(s, work)
    inserted = time.perf_counter()
    # Steady state, not the aftermath of a bulk load: without this, the autovacuum of the
    # fresh rows and the checkpoint that writes them out run during the measurements.
    await s.conn.execute("VACUUM (ANALYZE) jobs", timeout=3600)
    await s.conn.execute("ANALYZE", timeout=3600)
    try:
        await s.conn.execute("CHECKPOINT", timeout=3600)
    except asyncpg.InsufficientPrivilegeError:
        log("scale: no privilege to CHECKPOINT; measuring anyway")
    done = time.perf_counter()
    sizes = await s.conn.fetchrow(
        "SELECT pg_total_relation_size('jobs') AS total, pg_relation_size('jobs') AS heap,"
        " pg_indexes_size('jobs') AS indexes, (SELECT count(*) FROM jobs) AS rows"
    )
    assert sizes is not None
    out: Result = {
        "finished": cfg.scale_rows,
        "dead": cfg.scale_rows // DEAD_EVERY,
        "waiting": cfg.scale_waiting,
        "tenants": len(everyone),
        "connections": cfg.seed_connections,
        "insert_seconds": inserted - t0,
        "insert_rows_per_s": (cfg.scale_rows + cfg.scale_waiting) / (inserted - t0) if inserted > t0 else None,
        "vacuum_seconds": done - inserted,
        "seconds": done - t0,
        "table_mb": sizes["total"] / 1e6,
        "heap_mb": sizes["heap"] / 1e6,
        "indexes_mb": sizes["indexes"] / 1e6,
        "rows": sizes["rows"],
    }
    log(
        f"scale: seeded in {out['seconds']:.1f} s (insert {out['insert_seconds']:.1f} s, "
        f"VACUUM ANALYZE and CHECKPOINT {out['vacuum_seconds']:.1f} s); jobs table {out['table_mb']:,.0f} MB "
        f"(heap {out['heap_mb']:,.0f}, indexes {out['indexes_mb']:,.0f}), {out['rows']:,} rows"
    )
    return out


# --- many tenants -------------------------------------------------------------------------


def _candidates() -> int:
    """How many tenants a shared lease considers: the gateway's figure."""
    try:
        import gateway.leasing
    except ImportError:
        return DEFAULT_CANDIDATES
    value = getattr(gateway.leasing, "CANDIDATES", DEFAULT_CANDIDATES)
    return value if isinstance(value, int) else DEFAULT_CANDIDATES


# The pick timed inside the server, one call after another: at a fraction of a millisecond, the
# round trip and the client's scheduling are larger than the pick itself, and noisier.
_PICK_TIMES = """
CREATE OR REPLACE FUNCTION pg_temp.orch_bench_pick_times(p_queues text[], p_limit integer, p_n integer)
    RETURNS float8[] LANGUAGE plpgsql AS $$
DECLARE
    times float8[] := '{}';
    t0 timestamptz;
    found_any boolean;
BEGIN
    FOR i IN 1..p_n LOOP
        t0 := clock_timestamp();
        PERFORM * FROM orch_tenant_pick(p_queues, p_limit);
        found_any := FOUND;
        times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000)::float8;
        IF NOT found_any THEN
            RAISE EXCEPTION 'the fair-share pick found no tenant with work';
        END IF;
    END LOOP;
    RETURN times;
END
$$
"""


async def _picks(s: Session, n: int) -> tuple[Result, Result]:
    """The fair-share pick every shared lease starts with (the database function, with the
    gateway's limit), one at a time: timed in the server, and as round trips from the bench."""
    limit = _candidates()
    await s.conn.execute(_PICK_TIMES)
    times = await s.conn.fetchval(
        "SELECT pg_temp.orch_bench_pick_times($1::text[], $2, $3)", [FAIR_QUEUE], limit, n + WARM_LEASES
    )
    ms: list[float] = []
    for i in range(n + WARM_LEASES):
        t0 = time.perf_counter()
        picked = await s.conn.fetch(_PICK, [FAIR_QUEUE], limit)
        dt = (time.perf_counter() - t0) * 1000
        if not picked:
            raise BenchError("the fair-share pick found no tenant with work")
        if i >= WARM_LEASES:
            ms.append(dt)
    return summary_ms(list(times)[WARM_LEASES:]), summary_ms(ms)


async def _leases(s: Session, n: int) -> Result:
    """Sequential leases of one job over HTTP (a shared worker key, wait_ms=0) from the fair
    queue, as the lease round trip measures; acknowledged afterwards."""
    client = WorkerClient(s.url, worker_id="bench-fair", api_key=s.worker_key, queues=[FAIR_QUEUE])
    rtts: list[float] = []
    done: list[AckComplete] = []
    leased_tenants: set[str] = set()
    try:
        for i in range(n + WARM_LEASES):
            t0 = time.perf_counter()
            jobs = await client.lease(max_jobs=1, wait_ms=0, queues=[FAIR_QUEUE])
            dt = (time.perf_counter() - t0) * 1000
            if not jobs:
                raise BenchError(f"fair lease {i} found no job")
            if i >= WARM_LEASES:
                rtts.append(dt)
            done += [AckComplete(id=j.id, lease_token=j.lease_token) for j in jobs]
            leased_tenants.update(j.tenant_id for j in jobs)
        for start in range(0, len(done), 500):
            await client.ack(complete=done[start : start + 500])
    finally:
        await client.close()
    out = summary_ms(rtts)
    out["tenants_leased_from"] = len(leased_tenants)
    return out


async def _add_tenants(s: Session, lo: int, hi: int, per: int, width: int) -> None:
    for start in range(lo, hi + 1, SEED_CHUNK // max(1, per)):
        end = min(hi, start + SEED_CHUNK // max(1, per) - 1)
        await s.conn.execute(_TENANTS, start, end, width, timeout=600)
        await s.conn.execute(_TENANT_JOBS, start, end, width, per, FAIR_QUEUE, timeout=600)
    # The small tables grew a thousandfold; the jobs table barely changed. Vacuumed as well as
    # analyzed, as autovacuum would soon leave them: their pages all-visible, so the pick's
    # index-only probes read no heap.
    for table in ("tenants", "runnable_queues"):
        await s.conn.execute(f"VACUUM (ANALYZE) {table}", timeout=600)


async def _round(s: Session, label: str, tenants: int) -> Result:
    n = s.cfg.leases
    runnable = await s.conn.fetchval("SELECT count(*) FROM runnable_queues WHERE queue = $1", FAIR_QUEUE)
    log(f"scale, {label}: {runnable:,} tenants with work in {FAIR_QUEUE!r}; {n:,} picks, then {n:,} leases")
    await s.fresh_producers()
    pick, pick_client = await _picks(s, n)
    out: Result = {
        "tenants": tenants,
        "runnable": runnable,
        "pick": pick,
        "pick_client": pick_client,
        "lease": await _leases(s, n),
    }
    log(
        f"scale, {label}: pick p50 {pick['p50_ms']:.3f} ms, p99 {pick['p99_ms']:.3f} ms in the server "
        f"(round trip p50 {pick_client['p50_ms']:.2f} ms); "
        f"lease p50 {out['lease']['p50_ms']:.2f} ms, p99 {out['lease']['p99_ms']:.2f} ms "
        f"({out['lease']['tenants_leased_from']:,} tenants leased from)"
    )
    return out


async def tenant_scale(s: Session) -> Result:
    """`scale_tenants_base` tenants with work waiting in the fair queue, then `scale_tenants`:
    the fair-share pick (timed directly) and the lease round trip (over HTTP) with each.
    Tenants and their jobs are inserted with SQL, through the columns the API writes."""
    cfg = s.cfg
    base, total = cfg.scale_tenants_base, max(cfg.scale_tenants, cfg.scale_tenants_base)
    width = len(str(total - 1))
    # The few tenants share every lease of both rounds between them, with room to spare.
    per_base = 2 * (cfg.leases + WARM_LEASES) // base + 10
    t0 = time.perf_counter()
    await _add_tenants(s, 0, base - 1, per_base, width)
    seed_seconds = time.perf_counter() - t0
    few = await _round(s, f"{base:,} tenants", base)
    t0 = time.perf_counter()
    await _add_tenants(s, base, total - 1, JOBS_PER_TENANT, width)
    seed_seconds += time.perf_counter() - t0
    log(
        f"scale: {total - base:,} more tenants with {JOBS_PER_TENANT} ready jobs each in {time.perf_counter() - t0:.1f} s"
    )
    many = await _round(s, f"{total:,} tenants", total)
    return {
        "queue": FAIR_QUEUE,
        "seed_seconds": seed_seconds,
        "few": few,
        "many": many,
        "ratios": ratios_of(many, few, ("pick", "pick_client", "lease")),
    }
