-- name: schedule_clock
-- The database clock: fire times are computed against it, never against a gateway's clock.
SELECT now();

-- name: schedule_insert
INSERT INTO schedules (tenant_id, name, cron, timezone, queue, kind, payload, priority, max_attempts,
                       paused, next_fire_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (tenant_id, name) DO NOTHING
RETURNING *;

-- name: schedule_get
SELECT * FROM schedules WHERE tenant_id = $1 AND name = $2;

-- name: schedule_get_for_update
SELECT * FROM schedules WHERE tenant_id = $1 AND name = $2 FOR UPDATE;

-- name: schedule_list
SELECT * FROM schedules WHERE tenant_id = $1 ORDER BY name;

-- name: schedule_update
UPDATE schedules
   SET name = $3, cron = $4, timezone = $5, queue = $6, kind = $7, payload = $8, priority = $9,
       max_attempts = $10, paused = $11, next_fire_at = $12
 WHERE tenant_id = $1 AND name = $2
RETURNING *;

-- name: schedule_delete
DELETE FROM schedules WHERE tenant_id = $1 AND name = $2 RETURNING id;

-- name: schedule_due
-- Due schedules, each locked by one gateway at a time; SKIP LOCKED lets every gateway tick at once.
SELECT s.*, t.disabled AS tenant_disabled, now() AS db_now
  FROM schedules s
  JOIN tenants t ON t.id = s.tenant_id
 WHERE NOT s.paused AND s.next_fire_at <= now()
 ORDER BY s.next_fire_at
 LIMIT $1
   FOR UPDATE OF s SKIP LOCKED;

-- name: schedule_fire_insert_many
-- Claims (schedule, due time) pairs; only the pairs that come back may create a job.
INSERT INTO schedule_fires (schedule_id, fire_at)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[])
ON CONFLICT (schedule_id, fire_at) DO NOTHING
RETURNING schedule_id, fire_at;

-- name: schedule_fire_set_jobs
UPDATE schedule_fires f
   SET job_id = i.job_id
  FROM unnest($1::bigint[], $2::timestamptz[], $3::bigint[]) AS i(schedule_id, fire_at, job_id)
 WHERE f.schedule_id = i.schedule_id AND f.fire_at = i.fire_at;

-- name: schedule_advance_many
-- $3 holds the due time just handled, or NULL when nothing fired.
UPDATE schedules s
   SET next_fire_at = i.next_fire_at,
       last_fired_at = CASE WHEN i.fired_at IS NULL THEN s.last_fired_at
                            ELSE greatest(s.last_fired_at, i.fired_at) END
  FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS i(id, next_fire_at, fired_at)
 WHERE s.id = i.id;

-- name: schedule_next_due_in
-- Seconds until the earliest active schedule is due (negative when overdue), by the database clock.
SELECT extract(epoch FROM min(next_fire_at) - now())::float8 FROM schedules WHERE NOT paused;

-- name: schedule_fire_prune
-- Old fire records; only recent ones can meet a concurrent fire of the same due time.
-- Walks each schedule's primary-key range, so no index on fire_at alone is needed.
WITH old AS (
    SELECT f.schedule_id, f.fire_at
      FROM schedules s
      JOIN schedule_fires f ON f.schedule_id = s.id AND f.fire_at < now() - make_interval(secs => $1)
     LIMIT $2
       FOR UPDATE OF f SKIP LOCKED
), del AS (
    DELETE FROM schedule_fires f USING old
     WHERE f.schedule_id = old.schedule_id AND f.fire_at = old.fire_at
    RETURNING 1
)
SELECT count(*) FROM del;
