-- name: stats_jobs
-- The open work (and the dead-letter queue) by tenant, queue and state; finished jobs are counted
-- by the counters, not here. One branch per state, so each reads that state's partial index: as
-- one statement over the four states the planner took a parallel scan of the whole table, which
-- held both cores of a small machine for half a second every stats interval at a million rows.
SELECT tenant_id, queue, 'ready' AS state, count(*) AS n,
       extract(epoch FROM now() - min(run_at))::float8 AS oldest_ready_s
  FROM jobs WHERE state = 'ready' GROUP BY tenant_id, queue
UNION ALL
SELECT tenant_id, queue, 'scheduled', count(*), NULL FROM jobs WHERE state = 'scheduled' GROUP BY tenant_id, queue
UNION ALL
SELECT tenant_id, queue, 'running', count(*), NULL FROM jobs WHERE state = 'running' GROUP BY tenant_id, queue
UNION ALL
SELECT tenant_id, queue, 'dead', count(*), NULL FROM jobs WHERE state = 'dead' GROUP BY tenant_id, queue;

-- name: stats_tenants
SELECT id, weight, max_inflight FROM tenants;
