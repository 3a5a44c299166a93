-- name: tenant_insert
INSERT INTO tenants (id, name, weight, max_inflight) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: tenant_get
SELECT * FROM tenants WHERE id = $1;

-- name: tenant_list
SELECT * FROM tenants ORDER BY id;

-- name: tenant_update
-- $4 says whether max_inflight is being set (to $5, which may be NULL: no cap).
UPDATE tenants
   SET name = coalesce($2, name),
       weight = coalesce($3, weight),
       max_inflight = CASE WHEN $4 THEN $5 ELSE max_inflight END,
       disabled = coalesce($6, disabled)
 WHERE id = $1
RETURNING *;

-- name: retry_policy_upsert
INSERT INTO retry_policies (tenant_id, queue, max_attempts, retry_base_ms, retry_cap_ms)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, queue) DO UPDATE
   SET max_attempts = excluded.max_attempts, retry_base_ms = excluded.retry_base_ms,
       retry_cap_ms = excluded.retry_cap_ms, updated_at = now()
RETURNING *;

-- name: retry_policy_get
SELECT * FROM retry_policies WHERE tenant_id = $1 AND queue = $2;

-- name: retry_policy_delete
DELETE FROM retry_policies WHERE tenant_id = $1 AND queue = $2 RETURNING queue;
