-- The operator's reads across tenants, and deleting a tenant.
--
-- Job listings come in shapes, one per index that can serve the filters given: the filters an
-- index cannot serve (queue, kind) only narrow what it yields. The caller picks the shape, and
-- runs it after plan_for_values.

-- name: plan_for_values
-- For the rest of the transaction, statements are planned for the values they are given: a
-- cached generic plan assumes every tenant holds as many jobs as the average one, and would
-- read a small tenant's page by scanning the primary key past the jobs of the big ones.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: admin_key_list
SELECT key_id, tenant_id, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id;

-- name: admin_job_get
SELECT * FROM jobs WHERE id = $1;

-- name: admin_job_events
-- The newest $2 events of a job (events_job), for the caller to put oldest first.
SELECT e.id, e.xid, e.tenant_id, e.job_id, e.queue, e.type, e.at, e.data
  FROM events e
 WHERE e.job_id = $1
 ORDER BY e.id DESC
 LIMIT $2;

-- name: admin_job_list_by_id
-- One job by id, when it also matches the other filters ($2 the cursor: ids below it).
SELECT * FROM jobs
 WHERE id = $1 AND id < $2
   AND ($3::text IS NULL OR tenant_id = $3) AND ($4::job_state IS NULL OR state = $4)
   AND ($5::text IS NULL OR queue = $5) AND ($6::text IS NULL OR kind = $6)
   AND ($7::text IS NULL OR idempotency_key = $7);

-- name: admin_job_list_by_key
-- A tenant's job by idempotency key (jobs_idempotency: at most one).
SELECT * FROM jobs
 WHERE tenant_id = $1 AND idempotency_key = $2 AND id < $3
   AND ($4::job_state IS NULL OR state = $4) AND ($5::text IS NULL OR queue = $5) AND ($6::text IS NULL OR kind = $6);

-- name: admin_job_list_by_key_all
-- An idempotency key in every tenant: one probe of jobs_idempotency per tenant.
SELECT j.* FROM tenants t
 CROSS JOIN LATERAL (
        SELECT * FROM jobs
         WHERE tenant_id = t.id AND idempotency_key = $1 AND id < $2
           AND ($3::job_state IS NULL OR state = $3) AND ($4::text IS NULL OR queue = $4)
           AND ($5::text IS NULL OR kind = $5)) j
 ORDER BY j.id DESC
 LIMIT $6;

-- name: admin_job_list_tenant
-- A tenant's jobs, newest first (jobs_tenant_recent).
SELECT * FROM jobs
 WHERE tenant_id = $1 AND id < $2 AND ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR kind = $4)
 ORDER BY id DESC
 LIMIT $5;

-- name: admin_job_list_tenant_state
-- A tenant's jobs in one state, newest first (jobs_tenant_state_recent).
SELECT * FROM jobs
 WHERE tenant_id = $1 AND state = $2::job_state AND id < $3
   AND ($4::text IS NULL OR queue = $4) AND ($5::text IS NULL OR kind = $5)
 ORDER BY id DESC
 LIMIT $6;

-- name: admin_job_list_all
-- Every tenant's jobs, newest first (the primary key, backwards).
SELECT * FROM jobs
 WHERE id < $1 AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR kind = $3)
 ORDER BY id DESC
 LIMIT $4;

-- name: admin_job_list_all_state
-- Every tenant's jobs in one state, newest first: the newest page of each tenant from
-- jobs_tenant_state_recent, merged. Bounded by tenants x limit rows however rare the state is,
-- where a scan of the primary key would read every job newer than the page's.
SELECT j.* FROM tenants t
 CROSS JOIN LATERAL (
        SELECT * FROM jobs
         WHERE tenant_id = t.id AND state = $1::job_state AND id < $2
           AND ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR kind = $4)
         ORDER BY id DESC
         LIMIT $5) j
 ORDER BY j.id DESC
 LIMIT $5;

-- name: admin_worker_list
-- The workers that hold leases now, from the running jobs (jobs_running_expiry).
SELECT worker_id, count(*) AS leases, count(*) FILTER (WHERE lease_expires_at < now()) AS expired,
       array_agg(DISTINCT tenant_id ORDER BY tenant_id) AS tenants,
       array_agg(DISTINCT queue ORDER BY queue) AS queues,
       max(started_at) AS last_leased_at, min(lease_expires_at) AS next_expiry_at
  FROM jobs
 WHERE state = 'running' AND lease_expires_at IS NOT NULL AND worker_id IS NOT NULL
   AND ($1::text IS NULL OR tenant_id = $1)
 GROUP BY worker_id
 ORDER BY worker_id;

-- name: admin_queue_list
-- Each tenant's queues that are paused or hold open or dead jobs, read through the partial
-- indexes of those states, as the gauges read them.
WITH open AS (
    -- One branch per state, each on its partial index (see stats_jobs).
    SELECT tenant_id, queue, state, run_at FROM jobs WHERE state = 'scheduled' AND ($1::text IS NULL OR tenant_id = $1)
    UNION ALL
    SELECT tenant_id, queue, state, run_at FROM jobs WHERE state = 'ready' AND ($1::text IS NULL OR tenant_id = $1)
    UNION ALL
    SELECT tenant_id, queue, state, run_at FROM jobs WHERE state = 'running' AND ($1::text IS NULL OR tenant_id = $1)
    UNION ALL
    SELECT tenant_id, queue, state, run_at FROM jobs WHERE state = 'dead' AND ($1::text IS NULL OR tenant_id = $1)
), counts AS (
    SELECT tenant_id, queue,
           count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE state = 'ready') AS ready,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'dead') AS dead,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'ready'))::float8 AS oldest_ready_s
      FROM open
     GROUP BY tenant_id, queue
), paused AS (
    SELECT tenant_id, queue FROM queue_pauses WHERE $1::text IS NULL OR tenant_id = $1
)
SELECT tenant_id, queue, p.queue IS NOT NULL AS paused,
       coalesce(c.scheduled, 0) AS scheduled, coalesce(c.ready, 0) AS ready,
       coalesce(c.running, 0) AS running, coalesce(c.dead, 0) AS dead, c.oldest_ready_s
  FROM counts c FULL JOIN paused p USING (tenant_id, queue)
 ORDER BY tenant_id, queue;

-- name: admin_schedule_list
SELECT * FROM schedules WHERE ($1::text IS NULL OR tenant_id = $1) AND id > $2 ORDER BY id LIMIT $3;

-- name: admin_webhook_list
SELECT * FROM webhooks WHERE ($1::text IS NULL OR tenant_id = $1) AND id > $2 ORDER BY id LIMIT $3;

-- name: tenant_lock
-- The tenant row, locked until the transaction ends: a job inserted for it meanwhile waits,
-- as its foreign key check takes a share lock on the row.
SELECT id FROM tenants WHERE id = $1 FOR UPDATE;

-- name: tenant_running_count
SELECT count(*) FROM jobs WHERE tenant_id = $1 AND state = 'running';

-- name: tenant_delete_jobs
-- A page of the tenant's jobs below id $2 (jobs_tenant_recent), newest first. The states come
-- from the rows as deleted: a lease taken since the count above is seen here.
WITH page AS (
    SELECT id FROM jobs WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3
), gone AS (
    DELETE FROM jobs j USING page p WHERE j.id = p.id RETURNING j.id, j.state
)
SELECT count(*) AS n, count(*) FILTER (WHERE state = 'running') AS running, min(id) AS last FROM gone;

-- name: tenant_delete_events
-- A page of the tenant's events after ($2, $3) in (xid, id) order (events_tenant_xid). A tenant
-- id can be created again: its new owner must not read the old one's events.
WITH page AS (
    SELECT id, xid FROM events WHERE tenant_id = $1 AND (xid, id) > ($2::xid8, $3::bigint)
     ORDER BY xid, id LIMIT $4
), gone AS (
    DELETE FROM events e USING page p WHERE e.id = p.id RETURNING e.xid, e.id
)
SELECT count(*) AS n, (SELECT xid FROM gone ORDER BY xid DESC, id DESC LIMIT 1) AS last_xid,
       (SELECT id FROM gone ORDER BY xid DESC, id DESC LIMIT 1) AS last_id
  FROM gone;

-- name: tenant_delete
-- The tenant, once its jobs and events are gone; its keys, schedules (and their fires), webhooks,
-- consumers, policies and queue pauses go with it by ON DELETE CASCADE; the nonces of its keys
-- and its event retention horizon go too.
WITH horizon AS (
    DELETE FROM event_retention WHERE tenant_id = $1
), nonces AS (
    DELETE FROM request_nonces n USING api_keys k WHERE k.tenant_id = $1 AND n.key_id = k.key_id
), counts AS (
    SELECT (SELECT count(*) FROM api_keys WHERE tenant_id = $1) AS keys,
           (SELECT count(*) FROM schedules WHERE tenant_id = $1) AS schedules,
           (SELECT count(*) FROM webhooks WHERE tenant_id = $1) AS webhooks,
           (SELECT count(*) FROM consumers WHERE tenant_id = $1) AS consumers
), del AS (
    DELETE FROM tenants WHERE id = $1 RETURNING id
)
SELECT c.* FROM counts c, del;
