-- name: job_insert_many
-- Inserts a batch for one tenant in input order; max_attempts falls back to the tenant's retry
-- policy, then to the deployment default ($13); rows whose idempotency key exists are skipped
-- (the caller looks those up). Each inserted job writes its job.created event.
WITH input AS (
    SELECT *
      FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::int[], $6::bigint[], $7::timestamptz[],
                  $8::int[], $9::text[], $10::int[], $11::bigint[], $12::bigint[]) WITH ORDINALITY
           AS i(queue, kind, payload, priority, delay_ms, run_at, max_attempts, idempotency_key,
                timeout_seconds, retry_base_ms, retry_cap_ms, ord)
), policy AS (
    -- Once per queue of the batch, not once per row: the lookup is most of a row's cost.
    SELECT q.queue, p.max_attempts
      FROM (SELECT DISTINCT queue FROM input) q
     CROSS JOIN LATERAL orch_retry_policy($1, q.queue) p
), ins AS (
    INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, max_attempts, run_at,
                      idempotency_key, timeout_seconds, retry_base_ms, retry_cap_ms, traceparent)
    SELECT $1, i.queue, i.kind, i.payload, i.priority,
           CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'ready' END::job_state,
           coalesce(i.max_attempts, p.max_attempts, $13), t.run_at, i.idempotency_key, i.timeout_seconds,
           i.retry_base_ms, i.retry_cap_ms, $14
      FROM input i
      CROSS JOIN LATERAL (SELECT coalesce(i.run_at, now() + coalesce(i.delay_ms, 0) * interval '1 millisecond') AS run_at) t
      JOIN policy p ON p.queue = i.queue
     ORDER BY i.ord
    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue, 'job.created',
           jsonb_build_object('kind', kind, 'state', state, 'run_at', run_at, 'priority', priority)
      FROM ins ORDER BY id
)
SELECT * FROM ins ORDER BY id;

-- name: job_get_by_idempotency_keys
SELECT * FROM jobs WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[]);

-- name: job_get
-- $2 scopes the lookup to a tenant; NULL (a shared worker) sees every tenant's job.
SELECT * FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2);

-- name: job_list
SELECT * FROM jobs
 WHERE tenant_id = $1 AND ($2::text IS NULL OR queue = $2) AND id < $3
 ORDER BY id DESC
 LIMIT $4;

-- name: job_list_by_state
SELECT * FROM jobs
 WHERE tenant_id = $1 AND state = $2::job_state AND ($3::text IS NULL OR queue = $3) AND id < $4
 ORDER BY id DESC
 LIMIT $5;

-- name: runnable_queue_forget
SELECT orch_runnable_forget($1, $2::text[]);

-- name: job_lease
-- The functions (migration 0008) hold the statement, keep its generic plan, and apply the
-- tenant's in-flight cap.
SELECT * FROM orch_job_lease_capped($1, $2::text[], $3::text[], $4, $5, $6);

-- name: job_lease_shared
-- The fair-share pick and the lease from each candidate in turn, in one statement (migration 0011).
SELECT * FROM orch_job_lease_shared($1::text[], $2::text[], $3, $4, $5, $6);

-- name: job_heartbeat
-- A job with a hard timeout is never extended past started_at + timeout_seconds.
UPDATE jobs
   SET lease_expires_at = least(now() + make_interval(secs => $3),
                                started_at + make_interval(secs => coalesce(timeout_seconds, 2147483647)))
 WHERE id = $1 AND lease_token = $2 AND state = 'running' AND ($4::text IS NULL OR tenant_id = $4)
RETURNING lease_expires_at, cancel_requested;

-- name: job_complete_many
-- Rows that changed come back with changed = true; the others in their current state, so the
-- caller can tell a repeated completion (same token, already succeeded) from a stale token. The
-- others are looked up only when some row did not change: usually all did.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::jsonb[]) AS i(id, token, result)
), done AS (
    UPDATE jobs j
       SET state = 'succeeded', finished_at = now(), result = i.result, lease_expires_at = NULL
      FROM input i
     WHERE j.id = i.id AND j.id = ANY($1::bigint[]) AND j.lease_token = i.token AND j.state = 'running'
       AND ($4::text IS NULL OR j.tenant_id = $4)
    RETURNING j.*
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue, 'job.succeeded', jsonb_build_object('attempt', attempts)
      FROM done ORDER BY id
)
SELECT true AS changed, d.* FROM done d
UNION ALL
SELECT false AS changed, j.* FROM jobs j
 WHERE j.id = ANY($1::bigint[]) AND j.id NOT IN (SELECT id FROM done)
   AND (SELECT count(*) FROM done) < cardinality($1::bigint[])
   AND ($4::text IS NULL OR j.tenant_id = $4);

-- name: job_fail_many
-- A failure retries after the backoff (or the worker's retry_in_ms; the job's own backoff, then its
-- tenant's policy, then the deployment default $7/$8), or ends the job: dead when
-- attempts are used up or it is not retryable, cancelled when cancellation was requested.
-- A snooze ($10) re-schedules after retry_in_ms and gives the attempt back.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bool[], $5::bigint[], $6::float8[], $10::bool[])
           AS i(id, token, error, retryable, retry_in_ms, jitter, snooze)
), decided AS (
    SELECT j.id, i.error, i.snooze,
           CASE WHEN j.cancel_requested THEN 'cancelled'
                WHEN i.snooze THEN 'scheduled'
                WHEN i.retryable AND j.attempts < j.max_attempts THEN 'scheduled'
                ELSE 'dead' END::job_state AS new_state,
           now() + coalesce(i.retry_in_ms,
                            orch_backoff_ms(j.attempts, coalesce(j.retry_base_ms, p.retry_base_ms, $7),
                                            coalesce(j.retry_cap_ms, p.retry_cap_ms, $8), i.jitter))
                   * interval '1 millisecond' AS retry_at
      FROM jobs j JOIN input i ON i.id = j.id
      CROSS JOIN LATERAL orch_retry_policy(j.tenant_id, j.queue) p
     WHERE j.id = ANY($1::bigint[]) AND j.lease_token = i.token AND j.state = 'running'
       AND ($9::text IS NULL OR j.tenant_id = $9)
       FOR UPDATE OF j
), upd AS (
    UPDATE jobs j
       SET state = d.new_state,
           run_at = CASE WHEN d.new_state = 'scheduled' THEN d.retry_at ELSE j.run_at END,
           finished_at = CASE WHEN d.new_state = 'scheduled' THEN NULL ELSE now() END,
           last_error = d.error,
           attempts = CASE WHEN d.snooze AND d.new_state = 'scheduled' THEN greatest(j.attempts - 1, 0)
                           ELSE j.attempts END,
           lease_expires_at = NULL
      FROM decided d
     WHERE j.id = d.id
    RETURNING j.*
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue,
           CASE state WHEN 'scheduled' THEN 'job.retry_scheduled' WHEN 'dead' THEN 'job.dead'
                      ELSE 'job.cancelled' END,
           jsonb_build_object('attempt', attempts, 'error', left(last_error, 2000), 'reason',
                              CASE WHEN state = 'scheduled' AND id IN (SELECT id FROM decided WHERE snooze)
                                   THEN 'snoozed' ELSE 'failed' END)
           || CASE WHEN state = 'scheduled' THEN jsonb_build_object('run_at', run_at) ELSE '{}' END
      FROM upd ORDER BY id
)
SELECT true AS changed, u.* FROM upd u
UNION ALL
SELECT false AS changed, j.* FROM jobs j
 WHERE j.id = ANY($1::bigint[]) AND j.id NOT IN (SELECT id FROM upd)
   AND (SELECT count(*) FROM upd) < cardinality($1::bigint[])
   AND ($9::text IS NULL OR j.tenant_id = $9);

-- name: job_reap_expired
-- Expired leases lose their token (the stale worker is fenced out) and retry, or end.
-- SKIP LOCKED makes every gateway's reaper safe to run at once.
WITH expired AS (
    SELECT id, tenant_id, queue FROM jobs
     WHERE state = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE jobs j
       SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                        WHEN j.attempts < j.max_attempts THEN 'scheduled'
                        ELSE 'dead' END::job_state,
           run_at = now() + orch_backoff_ms(j.attempts, coalesce(j.retry_base_ms, p.retry_base_ms, $2),
                                            coalesce(j.retry_cap_ms, p.retry_cap_ms, $3), random())
                            * interval '1 millisecond',
           finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN now() END,
           last_error = 'lease expired',
           lease_expires_at = NULL,
           lease_token = NULL
      FROM expired e
      CROSS JOIN LATERAL orch_retry_policy(e.tenant_id, e.queue) p
     WHERE j.id = e.id
    RETURNING j.*
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue,
           CASE state WHEN 'scheduled' THEN 'job.retry_scheduled' WHEN 'dead' THEN 'job.dead'
                      ELSE 'job.cancelled' END,
           jsonb_build_object('attempt', attempts, 'error', last_error, 'reason', 'lease_expired')
           || CASE WHEN state = 'scheduled' THEN jsonb_build_object('run_at', run_at) ELSE '{}' END
      FROM upd ORDER BY id
)
SELECT count(*) FROM upd;

-- name: job_promote_due
-- Due scheduled jobs become ready; the update trigger's NOTIFY wakes waiting leases.
WITH due AS (
    SELECT id FROM jobs
     WHERE state = 'scheduled' AND run_at <= now()
     ORDER BY run_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE jobs j SET state = 'ready' FROM due WHERE j.id = due.id RETURNING 1
)
SELECT count(*) FROM upd;

-- name: job_next_due_in
-- Seconds until the earliest scheduled job is due (negative when overdue), by the database clock.
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM jobs WHERE state = 'scheduled';

-- name: job_ready_queues
-- Which (tenant, queue) pairs may hold ready jobs: the catch-up after a lost notification. Read
-- from runnable_queues (a superset, never missing a pair with a ready job), not the jobs.
SELECT tenant_id, queue FROM runnable_queues;

-- name: job_cancel
-- A scheduled or ready job is cancelled at once; a running one is marked, and ends cancelled when
-- its worker fails it or its lease expires. Terminal jobs are left alone (the caller answers 409).
WITH upd AS (
    UPDATE jobs
       SET state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END::job_state,
           finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
           cancel_requested = (state = 'running')
     WHERE id = $1 AND tenant_id = $2 AND state IN ('scheduled', 'ready', 'running')
    RETURNING *
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue, 'job.cancelled', jsonb_build_object('reason', 'requested')
      FROM upd WHERE state = 'cancelled'
)
SELECT true AS changed, u.* FROM upd u
UNION ALL
SELECT false AS changed, j.* FROM jobs j
 WHERE j.id = $1 AND j.tenant_id = $2 AND NOT EXISTS (SELECT 1 FROM upd);

-- name: job_replay_many
-- Dead or cancelled jobs go back to ready with their attempts reset. $1 names the jobs; $2 scopes
-- them to a tenant (NULL for the operator).
WITH upd AS (
    UPDATE jobs
       SET state = 'ready', attempts = 0, run_at = now(), finished_at = NULL, result = NULL,
           cancel_requested = false, lease_token = NULL, worker_id = NULL
     WHERE id = ANY($1::bigint[]) AND ($2::text IS NULL OR tenant_id = $2) AND state IN ('dead', 'cancelled')
    RETURNING *
), ev AS (
    INSERT INTO events (tenant_id, job_id, queue, type, data)
    SELECT tenant_id, id, queue, 'job.replayed', jsonb_build_object('last_error', left(last_error, 2000))
      FROM upd ORDER BY id
)
SELECT true AS changed, u.* FROM upd u
UNION ALL
SELECT false AS changed, j.* FROM jobs j
 WHERE j.id = ANY($1::bigint[]) AND ($2::text IS NULL OR j.tenant_id = $2) AND j.id NOT IN (SELECT id FROM upd)
   AND (SELECT count(*) FROM upd) < cardinality($1::bigint[]);

-- name: job_dead_ids
-- A page of a tenant's dead-letter queue, oldest first, for bulk replay.
SELECT id FROM jobs
 WHERE tenant_id = $1 AND state = 'dead' AND ($2::text IS NULL OR queue = $2) AND id > $3
 ORDER BY id
 LIMIT $4;

-- name: queue_pause
INSERT INTO queue_pauses (tenant_id, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: queue_resume
-- Waiting leases wake through the jobs channel, as if the queue's jobs had just become ready.
WITH gone AS (DELETE FROM queue_pauses WHERE tenant_id = $1 AND queue = $2 RETURNING queue)
SELECT pg_notify('orch_jobs', json_build_object('r', json_build_array(json_build_array($1::text, $2::text,
           (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE tenant_id = $1 AND queue = $2 AND state = 'ready' LIMIT 1000) n))))::text)
  FROM gone;

-- name: queue_paused_list
SELECT queue FROM queue_pauses WHERE tenant_id = $1 ORDER BY queue;
