"""The scale phase's load: a large jobs table inserted with SQL, then brought to a steady state."""

from __future__ import annotations

import time

import asyncpg

from ._infra import Admin
from ._report import Result
from ._session import Session, log

# Rows per INSERT statement.
SEED_CHUNK = 200_000

_SEED_FINISHED = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, attempts, max_attempts, run_at,
                  created_at, started_at, finished_at, result, lease_token, worker_id)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'default', 'seed', jsonb_build_object('n', g), 0,
       'succeeded', 1, 5, t.at, t.at, t.at, t.at + interval '20 milliseconds', '{"ok": true}'::jsonb, g,
       'seed-worker'
  FROM generate_series($2::bigint, $3::bigint) AS g
 CROSS JOIN LATERAL (SELECT now() - interval '1 day' + g * interval '10 milliseconds' AS at) t
"""

_SEED_WAITING = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, max_attempts, run_at, created_at)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'backlog', 'seed', jsonb_build_object('n', g), 0,
       'ready', 5, now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series($2::bigint, $3::bigint) AS g
"""


async def seed(s: Session) -> Result:
    """1,000,000 succeeded jobs over every tenant, and 100,000 ready ones in a queue no bench
    worker serves (so they stay waiting), inserted with SQL; then VACUUM ANALYZE and a
    checkpoint."""
    cfg = s.cfg
    admin = Admin(s.url, s.token)
    background = [f"bg-{i:02d}" for i in range(cfg.background_tenants)]
    for tenant_id in background:
        await admin.tenant(tenant_id)
    everyone = [t for t, _ in s.tenants] + background
    log(f"scale: inserting {cfg.scale_finished:,} succeeded and {cfg.scale_waiting:,} waiting jobs")
    t0 = time.perf_counter()
    for sql, total in ((_SEED_FINISHED, cfg.scale_finished), (_SEED_WAITING, cfg.scale_waiting)):
        for start in range(1, total + 1, SEED_CHUNK):
            await s.conn.execute(sql, everyone, start, min(total, start + SEED_CHUNK - 1), timeout=600)
    # Steady state, not the aftermath of a bulk load: without this, the autovacuum of the
    # fresh rows and the checkpoint that writes them out run during the measurements.
    await s.conn.execute("VACUUM (ANALYZE) jobs", timeout=600)
    await s.conn.execute("ANALYZE", timeout=600)
    try:
        await s.conn.execute("CHECKPOINT", timeout=600)
    except asyncpg.InsufficientPrivilegeError:
        log("scale: no privilege to CHECKPOINT; measuring anyway")
    seconds = time.perf_counter() - t0
    size = await s.conn.fetchval("SELECT pg_total_relation_size('jobs')")
    rows = await s.conn.fetchval("SELECT count(*) FROM jobs")
    log(f"scale: seeded in {seconds:.1f} s; jobs table {size / 1e6:,.0f} MB, {rows:,} rows")
    return {
        "finished": cfg.scale_finished,
        "waiting": cfg.scale_waiting,
        "tenants": len(everyone),
        "seconds": seconds,
        "table_mb": size / 1e6,
        "rows": rows,
    }
