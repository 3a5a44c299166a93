-- name: stats_jobs
-- The open work (and the dead-letter queue) by tenant, queue and state, read through the partial
-- indexes of those states; finished jobs are counted by the counters, not here.
SELECT tenant_id, queue, state::text AS state, count(*) AS n,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'ready'))::float8 AS oldest_ready_s
  FROM jobs
 WHERE state IN ('scheduled', 'ready', 'running', 'dead')
 GROUP BY tenant_id, queue, state;

-- name: stats_tenants
SELECT id, weight, max_inflight FROM tenants;
