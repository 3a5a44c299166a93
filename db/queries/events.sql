-- name: event_read
-- One page of a tenant's events after the cursor ($2, $3), in (xid, id) order, and how the read
-- stands, all from one snapshot. Only events of transactions older than every transaction still
-- in progress (xid < the snapshot's xmin) are returned: whatever commits later has an xid at
-- or above that xmin, so it sorts after every cursor handed out here (docs/events.md).
-- $2 NULL: start at the tenant's retention horizon (the oldest retained event).
-- Always one row: the page's events are in the e_* columns (NULL when there are none).
WITH snap AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, pg_snapshot_xmax(pg_current_snapshot()) AS xmax
), horizon AS MATERIALIZED (
    SELECT coalesce((SELECT horizon_xid FROM event_retention WHERE tenant_id = $1), '0'::xid8) AS xid,
           coalesce((SELECT horizon_id FROM event_retention WHERE tenant_id = $1), 0::bigint) AS id
), start AS MATERIALIZED (
    SELECT coalesce($2::xid8, h.xid) AS xid, CASE WHEN $2::xid8 IS NULL THEN h.id ELSE $3::bigint END AS id,
           $2::xid8 IS NOT NULL AND ($2::xid8, $3::bigint) < (h.xid, h.id) AS gone,
           -- A position past every transaction id assigned so far was never handed out.
           $2::xid8 IS NOT NULL AND $2::xid8 > (SELECT xmax FROM snap) AS unknown,
           h.xid AS horizon_xid, h.id AS horizon_id
      FROM horizon h
), page AS (
    SELECT e.id, e.xid, e.job_id, e.queue, e.type, e.at, e.data
      FROM events e
     WHERE e.tenant_id = $1
       AND (e.xid, e.id) > ((SELECT xid FROM start), (SELECT id FROM start))
       AND e.xid < (SELECT xmin FROM snap)
     ORDER BY e.xid, e.id
     LIMIT $4
)
SELECT s.xid AS start_xid, s.id AS start_id, s.gone, s.unknown, s.horizon_xid, s.horizon_id,
       -- Committed events past the cursor that wait for an older transaction to end.
       EXISTS (SELECT 1 FROM events w
                WHERE w.tenant_id = $1
                  AND (w.xid, w.id) > (s.xid, s.id)
                  AND w.xid >= (SELECT xmin FROM snap)) AS withheld,
       p.id AS e_id, p.xid AS e_xid, p.job_id AS e_job_id, p.queue AS e_queue, p.type AS e_type,
       p.at AS e_at, p.data AS e_data
  FROM start s
  LEFT JOIN page p ON true
 ORDER BY p.xid, p.id;

-- name: event_prune_lock
-- One pruner at a time across every gateway; the caller holds a transaction.
SELECT pg_try_advisory_xact_lock(hashtextextended('orch.event_prune', 0));

-- name: event_prune
-- Deletes old events among the $2 oldest by id (a bounded scan of the primary key: ids follow
-- insertion, so the oldest events are there), and moves each tenant's horizon to the largest
-- (xid, id) deleted. Events of transactions that may still be delivered (xid at or above the
-- snapshot's xmin) are left alone.
WITH snap AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, now() - make_interval(secs => $1) AS cutoff
), doomed AS MATERIALIZED (
    SELECT h.id FROM (SELECT id, xid, at FROM events ORDER BY id LIMIT $2) h
     WHERE h.at < (SELECT cutoff FROM snap) AND h.xid < (SELECT xmin FROM snap)
), gone AS (
    -- An id list, so the delete probes the primary key rather than scanning the table.
    DELETE FROM events e WHERE e.id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING e.tenant_id, e.xid, e.id
), horizon AS (
    SELECT DISTINCT ON (tenant_id) tenant_id, xid, id FROM gone ORDER BY tenant_id, xid DESC, id DESC
), moved AS (
    INSERT INTO event_retention AS r (tenant_id, horizon_xid, horizon_id)
    SELECT tenant_id, xid, id FROM horizon
    ON CONFLICT (tenant_id) DO UPDATE
       SET horizon_xid = excluded.horizon_xid, horizon_id = excluded.horizon_id, pruned_at = now()
     WHERE (r.horizon_xid, r.horizon_id) < (excluded.horizon_xid, excluded.horizon_id)
)
SELECT count(*) FROM gone;

-- name: consumer_insert
-- 'oldest' starts at the tenant's retention horizon; 'latest' after every transaction that has
-- ended (xid below the snapshot's xmin), so it receives what commits from now on.
INSERT INTO consumers (tenant_id, name, cursor_xid, cursor_id)
SELECT $1, $2,
       CASE WHEN $3 = 'latest' THEN pg_snapshot_xmin(pg_current_snapshot())
            ELSE coalesce((SELECT horizon_xid FROM event_retention WHERE tenant_id = $1), '0'::xid8) END,
       CASE WHEN $3 = 'latest' THEN 0
            ELSE coalesce((SELECT horizon_id FROM event_retention WHERE tenant_id = $1), 0) END
ON CONFLICT (tenant_id, name) DO NOTHING
RETURNING *;

-- name: consumer_get
SELECT * FROM consumers WHERE tenant_id = $1 AND name = $2;

-- name: consumer_list
SELECT * FROM consumers WHERE tenant_id = $1 ORDER BY name;

-- name: consumer_delete
DELETE FROM consumers WHERE tenant_id = $1 AND name = $2 RETURNING name;

-- name: consumer_ack
-- Moves the position forward to ($3, $4) when that is one of the tenant's returnable events, or
-- lies at or before its retention horizon (its event may have been pruned since); an older one
-- changes nothing. No row back: unknown consumer, a position not ahead of it, or one never handed out.
UPDATE consumers c
   SET cursor_xid = $3::xid8, cursor_id = $4::bigint, updated_at = now()
 WHERE c.tenant_id = $1 AND c.name = $2
   AND (c.cursor_xid, c.cursor_id) < ($3::xid8, $4::bigint)
   AND (EXISTS (SELECT 1 FROM events e
                 WHERE e.tenant_id = $1 AND e.xid = $3::xid8 AND e.id = $4::bigint
                   AND e.xid < pg_snapshot_xmin(pg_current_snapshot()))
        OR EXISTS (SELECT 1 FROM event_retention r
                    WHERE r.tenant_id = $1 AND ($3::xid8, $4::bigint) <= (r.horizon_xid, r.horizon_id)))
RETURNING *;

-- name: webhook_insert
-- A new endpoint receives what commits from now on (see consumer_insert's 'latest').
INSERT INTO webhooks (tenant_id, url, event_types, secret, cursor_xid, cursor_id)
VALUES ($1, $2, $3::text[], $4, pg_snapshot_xmin(pg_current_snapshot()), 0)
RETURNING *;

-- name: webhook_get
SELECT * FROM webhooks WHERE id = $1 AND tenant_id = $2;

-- name: webhook_list
SELECT * FROM webhooks WHERE tenant_id = $1 ORDER BY id;

-- name: webhook_delete
DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2 RETURNING id;

-- name: webhook_resume
UPDATE webhooks
   SET state = 'active', attempts = 0, next_attempt_at = now()
 WHERE id = $1 AND tenant_id = $2
RETURNING *;

-- name: webhook_activity
-- Whether any endpoint is active; whether one has committed events ahead that wait for an older
-- transaction; seconds until the earliest one waiting out a backoff is due, and until the
-- earliest lease held by another process than $1 runs out (its holder may be gone); database clock.
WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT EXISTS (SELECT 1 FROM webhooks WHERE state = 'active') AS active,
       EXISTS (SELECT 1 FROM webhooks w
                WHERE w.state = 'active'
                  AND EXISTS (SELECT 1 FROM events e
                               WHERE e.tenant_id = w.tenant_id
                                 AND (e.xid, e.id) > (w.cursor_xid, w.cursor_id)
                                 AND e.xid >= (SELECT xmin FROM snap))) AS withheld,
       (SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
          FROM webhooks WHERE state = 'active' AND attempts > 0 AND next_attempt_at > now()) AS next_retry_in,
       (SELECT extract(epoch FROM min(lease_until) - now())::float8
          FROM webhooks WHERE state = 'active' AND lease_until >= now() AND lease_owner <> $1) AS next_expiry_in;

-- name: webhook_claim
-- Leases up to $1 endpoints to the process $2 for $3 seconds: active, due, with events past
-- their cursor (one index probe each), not leased or with a lease run out, leaving out the ids
-- in $4. Each claim bumps lease_token, which every later write of the holder must name. The
-- lease is a row, not a lock: nothing outlives this statement's transaction, so it works
-- through transaction pooling, and an open transaction's xid never holds back event readers
-- while the HTTP requests run. SKIP LOCKED: processes claiming at once take different
-- endpoints, and a row changed under the pick is checked again before it is taken.
-- previous_until is set when the last holder never released its lease (it died, or stalled).
WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
picked AS (
    SELECT w.id, w.lease_owner AS previous_owner, w.lease_until AS previous_until
      FROM webhooks w
      JOIN tenants t ON t.id = w.tenant_id AND NOT t.disabled
     WHERE w.state = 'active' AND w.next_attempt_at <= now() AND w.id <> ALL ($4::bigint[])
       AND (w.lease_until IS NULL OR w.lease_until < now())
       AND EXISTS (SELECT 1 FROM events e
                    WHERE e.tenant_id = w.tenant_id
                      AND (e.xid, e.id) > (w.cursor_xid, w.cursor_id)
                      AND e.xid < (SELECT xmin FROM snap))
     ORDER BY w.next_attempt_at, w.id
     LIMIT $1
       FOR UPDATE OF w SKIP LOCKED
)
UPDATE webhooks w
   SET lease_owner = $2, lease_until = now() + make_interval(secs => $3::float8), lease_token = w.lease_token + 1
  FROM picked p
 WHERE w.id = p.id
RETURNING w.*, p.previous_owner, p.previous_until;

-- name: webhook_extend
-- The holder of lease $2 keeps the endpoint $3 seconds more; no row: the lease is not its any more.
UPDATE webhooks SET lease_until = now() + make_interval(secs => $3::float8)
 WHERE id = $1 AND lease_token = $2
RETURNING lease_until;

-- name: webhook_release
UPDATE webhooks SET lease_owner = NULL, lease_until = NULL
 WHERE id = $1 AND lease_token = $2
RETURNING id;

-- name: webhook_lease
-- Who holds the endpoint's lease now (for the log line of a holder that lost it).
SELECT lease_owner, lease_until, lease_token FROM webhooks WHERE id = $1;

-- name: webhook_delivered
-- Fenced: only the holder of lease $5 moves the cursor; no row back otherwise.
UPDATE webhooks
   SET cursor_xid = $2::xid8, cursor_id = $3::bigint, attempts = 0, delivered = delivered + 1,
       last_status = $4, last_error = NULL, last_attempt_at = now(), last_delivered_at = now()
 WHERE id = $1 AND lease_token = $5
RETURNING id;

-- name: webhook_advance
-- Past events the endpoint does not subscribe to; fenced as webhook_delivered.
UPDATE webhooks SET cursor_xid = $2::xid8, cursor_id = $3::bigint
 WHERE id = $1 AND lease_token = $4
RETURNING id;

-- name: webhook_failed
-- A failed attempt: retry after the backoff ($6 base, $7 cap, $8 the jitter draw), or park the
-- endpoint once $9 attempts have failed. The cursor moves past skipped events only ($2, $3).
-- Fenced as webhook_delivered by the lease $10.
UPDATE webhooks
   SET cursor_xid = $2::xid8, cursor_id = $3::bigint,
       attempts = attempts + 1,
       state = CASE WHEN attempts + 1 >= $9 THEN 'parked' ELSE 'active' END,
       next_attempt_at = now() + orch_backoff_ms(attempts + 1, $6, $7, $8) * interval '1 millisecond',
       last_status = $4, last_error = $5, last_attempt_at = now()
 WHERE id = $1 AND lease_token = $10
RETURNING state, attempts;

-- name: consumer_lags
-- Events each durable consumer has not acknowledged, counted up to $1 (a bounded index scan).
SELECT c.tenant_id, c.name,
       (SELECT count(*) FROM (SELECT 1 FROM events e
                               WHERE e.tenant_id = c.tenant_id AND (e.xid, e.id) > (c.cursor_xid, c.cursor_id)
                               LIMIT $1) ahead) AS n
  FROM consumers c
 ORDER BY c.tenant_id, c.name;

-- name: webhook_backlogs
-- Events each endpoint has yet to receive (of the types it asked for), counted up to $1.
SELECT w.tenant_id, w.id::text AS name,
       (SELECT count(*) FROM (SELECT 1 FROM events e
                               WHERE e.tenant_id = w.tenant_id AND (e.xid, e.id) > (w.cursor_xid, w.cursor_id)
                                 AND (cardinality(w.event_types) = 0 OR e.type = ANY (w.event_types))
                               LIMIT $1) ahead) AS n
  FROM webhooks w
 ORDER BY w.tenant_id, w.id;
