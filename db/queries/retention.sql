-- name: retention_policy_lock
-- Serialises replacements of one scope's policy; the caller holds a transaction.
SELECT pg_advisory_xact_lock(hashtextextended('orch.retention:' || $1 || '/' || $2, 0));

-- name: retention_policy_replace
-- The scope's rows become exactly the states in $3, with the values in $4 (NULL: for ever).
WITH dropped AS (
    DELETE FROM retention_policies
     WHERE tenant_id = $1 AND queue = $2 AND state <> ALL ($3::job_state[])
)
INSERT INTO retention_policies (tenant_id, queue, state, keep_seconds)
SELECT $1, $2, s.state, s.keep_seconds
  FROM unnest($3::job_state[], $4::bigint[]) AS s(state, keep_seconds)
ON CONFLICT (tenant_id, queue, state) DO UPDATE
   SET keep_seconds = excluded.keep_seconds, updated_at = now();

-- name: retention_policy_get
-- The scope's own rows and, for a queue, the tenant-wide rows it falls back to.
SELECT queue, state, keep_seconds FROM retention_policies WHERE tenant_id = $1 AND queue IN ($2, '');

-- name: retention_policy_delete
DELETE FROM retention_policies WHERE tenant_id = $1 AND queue = $2 RETURNING state;

-- name: job_prune_lock
-- One job pruner at a time across every gateway; the caller holds a transaction.
SELECT pg_try_advisory_xact_lock(hashtextextended('orch.job_prune', 0));

-- name: job_retention_scan
-- Every (tenant, queue, final state) holding finished jobs that are not kept for ever: the
-- retention in force (the queue's row, else the tenant-wide row, else the deployment's $2 for
-- the state in $1) and the seconds until its oldest job falls due (negative: overdue). The
-- pairs come from a skip scan of jobs_finished, one probe per pair; each oldest job is one more.
WITH RECURSIVE pairs AS (
    (SELECT tenant_id, queue FROM jobs
      WHERE state IN ('succeeded', 'cancelled', 'dead')
      ORDER BY tenant_id, queue
      LIMIT 1)
    UNION ALL
    SELECT n.tenant_id, n.queue
      FROM pairs p
     CROSS JOIN LATERAL (
            SELECT j.tenant_id, j.queue FROM jobs j
             WHERE j.state IN ('succeeded', 'cancelled', 'dead')
               AND (j.tenant_id, j.queue) > (p.tenant_id, p.queue)
             ORDER BY j.tenant_id, j.queue
             LIMIT 1) n
), kept AS (
    SELECT p.tenant_id, p.queue, d.state,
           CASE WHEN pol.found THEN pol.keep_seconds ELSE d.keep_seconds END AS keep_seconds
      FROM pairs p
     CROSS JOIN unnest($1::job_state[], $2::float8[]) AS d(state, keep_seconds)
      LEFT JOIN LATERAL (
            SELECT true AS found, r.keep_seconds::float8 AS keep_seconds
              FROM retention_policies r
             WHERE r.tenant_id = p.tenant_id AND r.queue IN (p.queue, '') AND r.state = d.state
             ORDER BY r.queue = ''
             LIMIT 1) pol ON true
)
SELECT k.tenant_id, k.queue, k.state, k.keep_seconds,
       extract(epoch FROM o.oldest - now())::float8 + k.keep_seconds AS due_in
  FROM kept k
 CROSS JOIN LATERAL (
        SELECT j.finished_at AS oldest FROM jobs j
         WHERE j.tenant_id = k.tenant_id AND j.queue = k.queue AND j.state = k.state
           AND j.state IN ('succeeded', 'cancelled', 'dead')
         ORDER BY j.finished_at
         LIMIT 1) o
 WHERE k.keep_seconds IS NOT NULL;

-- name: job_prune
-- Deletes up to $5 jobs past their retention from the groups given (tenant $1, queue $2, state
-- $3, retention $4 in seconds), taking the groups in order and each one's oldest jobs first;
-- the delete goes by primary key. Rows another transaction holds (a replay under way) are
-- skipped, never waited for. Fire records naming a deleted job get job_id NULL. Returns how many
-- went from each group, by its position in the arrays (from 1).
WITH g AS (
    SELECT *
      FROM unnest($1::text[], $2::text[], $3::job_state[], $4::float8[]) WITH ORDINALITY
           AS g(tenant_id, queue, state, keep_seconds, ord)
), doomed AS MATERIALIZED (
    SELECT x.id, g.ord, g.state
      FROM g
     CROSS JOIN LATERAL (
            SELECT j.id FROM jobs j
             WHERE j.tenant_id = g.tenant_id AND j.queue = g.queue AND j.state = g.state
               AND j.state IN ('succeeded', 'cancelled', 'dead')
               AND j.finished_at < now() - make_interval(secs => g.keep_seconds)
             ORDER BY j.finished_at
             LIMIT $5
               FOR UPDATE SKIP LOCKED) x
     LIMIT $5
), gone AS (
    DELETE FROM jobs j WHERE j.id = ANY (ARRAY(SELECT id FROM doomed)) RETURNING j.id
), unlinked AS (
    UPDATE schedule_fires f SET job_id = NULL WHERE f.job_id = ANY (ARRAY(SELECT id FROM gone))
)
SELECT d.ord, d.state, count(*) AS n
  FROM doomed d JOIN gone USING (id)
 GROUP BY d.ord, d.state
 ORDER BY d.ord;

