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
