-- The operator's console (/ui): bounded reads for its pages. Every statement reads a window of
-- an index — never a count over the jobs table — so a page costs the same on a table of millions.
--
-- A job listing whose filters an index cannot serve (queue, kind) scans a window of the index
-- that serves the rest, newest first, and keeps the matches: `low` is the lowest id the window
-- covers (0: it reached the end), the cursor the next page continues below.

-- name: console_window_all
-- Every tenant's jobs below $1, the newest $2 of them (the primary key, backwards).
WITH w AS MATERIALIZED (
    SELECT id, queue, kind FROM jobs WHERE id < $1 ORDER BY id DESC LIMIT $2
)
SELECT CASE WHEN (SELECT count(*) FROM w) < $2 THEN 0 ELSE (SELECT min(id) FROM w) END AS low,
       ARRAY(SELECT id FROM w
              WHERE ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR kind = $4)
              ORDER BY id DESC LIMIT $5) AS ids;

-- name: console_window_tenant
-- A tenant's jobs below $2, the newest $3 of them: their ids from jobs_tenant_recent alone, then
-- each row by its primary key (LIMIT 1 keeps that a lookup, never a hash join over the table).
-- Left to itself the planner may walk the primary key backwards and filter on the tenant, which
-- reads every newer job of the others when this tenant's are old.
WITH w AS MATERIALIZED (
    SELECT k.id, j.queue, j.kind
      FROM (SELECT id FROM jobs WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3) k
     CROSS JOIN LATERAL (SELECT queue, kind FROM jobs WHERE id = k.id LIMIT 1) j
)
SELECT CASE WHEN (SELECT count(*) FROM w) < $3 THEN 0 ELSE (SELECT min(id) FROM w) END AS low,
       ARRAY(SELECT id FROM w
              WHERE ($4::text IS NULL OR queue = $4) AND ($5::text IS NULL OR kind = $5)
              ORDER BY id DESC LIMIT $6) AS ids;

-- name: console_window_tenant_state
-- A tenant's jobs in one state below $3, the newest $4 of them (ids from jobs_tenant_state_recent,
-- as console_window_tenant).
WITH w AS MATERIALIZED (
    SELECT k.id, j.queue, j.kind
      FROM (SELECT id FROM jobs
             WHERE tenant_id = $1 AND state = $2::job_state AND id < $3
             ORDER BY id DESC LIMIT $4) k
     CROSS JOIN LATERAL (SELECT queue, kind FROM jobs WHERE id = k.id LIMIT 1) j
)
SELECT CASE WHEN (SELECT count(*) FROM w) < $4 THEN 0 ELSE (SELECT min(id) FROM w) END AS low,
       ARRAY(SELECT id FROM w
              WHERE ($5::text IS NULL OR queue = $5) AND ($6::text IS NULL OR kind = $6)
              ORDER BY id DESC LIMIT $7) AS ids;

-- name: console_window_state
-- Every tenant's jobs in one state below $2: a window of $3 per tenant (jobs_tenant_state_recent).
-- The range every tenant's window covers starts at the highest low of the windows that filled;
-- matches below it wait for the next page, so no job is skipped or listed twice.
WITH w AS MATERIALIZED (
    SELECT k.id, t.id AS tenant_id, j.queue, j.kind FROM tenants t
     CROSS JOIN LATERAL (
            SELECT id FROM jobs
             WHERE tenant_id = t.id AND state = $1::job_state AND id < $2
             ORDER BY id DESC LIMIT $3) k
     CROSS JOIN LATERAL (SELECT queue, kind FROM jobs WHERE id = k.id LIMIT 1) j
), per AS (
    SELECT count(*) AS n, min(id) AS low FROM w GROUP BY tenant_id
), bound AS (
    SELECT coalesce(max(low) FILTER (WHERE n >= $3), 0) AS low FROM per
)
SELECT (SELECT low FROM bound) AS low,
       ARRAY(SELECT id FROM w
              WHERE id >= (SELECT low FROM bound)
                AND ($4::text IS NULL OR queue = $4) AND ($5::text IS NULL OR kind = $5)
              ORDER BY id DESC LIMIT $6) AS ids;

-- name: console_jobs_by_ids
SELECT * FROM jobs WHERE id = ANY ($1::bigint[]) ORDER BY id DESC;

-- name: console_tenant_count
SELECT count(*) FROM tenants;

-- name: console_dead_groups
-- The dead-letter queue grouped by tenant, queue, kind and error (the last line of the error,
-- where a traceback names the exception), over a sample: each tenant's newest $2 dead jobs
-- (jobs_tenant_state_recent), or one tenant's alone.
WITH sample AS (
    SELECT j.* FROM tenants t
     CROSS JOIN LATERAL (
            SELECT id, tenant_id, queue, kind, finished_at, last_error FROM jobs
             WHERE tenant_id = t.id AND state = 'dead'
             ORDER BY id DESC LIMIT $2) j
     WHERE $1::text IS NULL OR t.id = $1
)
SELECT tenant_id, queue, kind,
       left(split_part(rtrim(coalesce(last_error, ''), E' \t\r\n'), E'\n', -1), 200) AS error,
       count(*) AS n, max(id) AS newest_id, min(finished_at) AS first_at, max(finished_at) AS last_at
  FROM sample
 GROUP BY 1, 2, 3, 4
 ORDER BY n DESC, newest_id DESC
 LIMIT $3;

-- name: console_dead_groups_queue
-- The same for one queue: the newest $3 of each tenant's dead jobs in it by the time they died
-- (jobs_finished holds the queue, so no other queue's jobs are read).
WITH sample AS (
    SELECT j.* FROM tenants t
     CROSS JOIN LATERAL (
            SELECT id, tenant_id, queue, kind, finished_at, last_error FROM jobs
             WHERE tenant_id = t.id AND queue = $2 AND state = 'dead'
             ORDER BY finished_at DESC LIMIT $3) j
     WHERE $1::text IS NULL OR t.id = $1
)
SELECT tenant_id, queue, kind,
       left(split_part(rtrim(coalesce(last_error, ''), E' \t\r\n'), E'\n', -1), 200) AS error,
       count(*) AS n, max(id) AS newest_id, min(finished_at) AS first_at, max(finished_at) AS last_at
  FROM sample
 GROUP BY 1, 2, 3, 4
 ORDER BY n DESC, newest_id DESC
 LIMIT $4;

-- name: console_dead_count_indexed
-- How many dead jobs a tenant (and a queue) holds, counted up to $3 from the index alone
-- (jobs_dead, or jobs_finished with a queue): no row is read.
SELECT count(*) AS n FROM (
    SELECT 1 FROM jobs WHERE tenant_id = $1 AND state = 'dead' AND ($2::text IS NULL OR queue = $2) LIMIT $3
) d;

-- name: console_dead_count
-- How many of the $5 jobs of a tenant's queue that died last (jobs_finished) match the filter:
-- `scanned` short of $5 means the count is exact. Kind and error are in the rows: each is read.
WITH w AS MATERIALIZED (
    SELECT queue, kind, last_error FROM jobs
     WHERE tenant_id = $1 AND state = 'dead' AND queue = $2
     ORDER BY finished_at DESC LIMIT $5
)
SELECT count(*) AS scanned,
       count(*) FILTER (
           WHERE ($3::text IS NULL OR kind = $3)
             AND ($4::text IS NULL
                  OR left(split_part(rtrim(coalesce(last_error, ''), E' \t\r\n'), E'\n', -1), 200) = $4)
       ) AS matched
  FROM w;

-- name: console_dead_count_tenant
-- The same over the tenant's every queue, newest by id (jobs_dead).
WITH w AS MATERIALIZED (
    SELECT kind, last_error FROM jobs WHERE tenant_id = $1 AND state = 'dead' ORDER BY id DESC LIMIT $4
)
SELECT count(*) AS scanned,
       count(*) FILTER (
           WHERE ($2::text IS NULL OR kind = $2)
             AND ($3::text IS NULL
                  OR left(split_part(rtrim(coalesce(last_error, ''), E' \t\r\n'), E'\n', -1), 200) = $3)
       ) AS matched
  FROM w;

-- name: console_dead_ids
-- A page of a tenant's dead jobs matching the filter, oldest first after $2, for bulk replay.
SELECT id FROM jobs
 WHERE tenant_id = $1 AND state = 'dead' AND id > $2
   AND ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR kind = $4)
   AND ($5::text IS NULL
        OR left(split_part(rtrim(coalesce(last_error, ''), E' \t\r\n'), E'\n', -1), 200) = $5)
 ORDER BY id
 LIMIT $6;

-- name: console_queue_pauses
SELECT tenant_id, queue, paused_at FROM queue_pauses ORDER BY tenant_id, queue LIMIT $1;
