-- name: api_key_insert
INSERT INTO api_keys (key_id, secret, tenant_id) VALUES ($1, $2, $3);

-- name: api_key_get
SELECT k.key_id, k.secret, k.tenant_id, k.revoked_at IS NOT NULL AS revoked,
       coalesce(t.disabled, false) AS tenant_disabled
  FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
 WHERE k.key_id = $1;

-- name: api_key_revoke
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 RETURNING key_id;

-- name: request_nonce_insert
INSERT INTO request_nonces (key_id, nonce) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING true;

-- name: request_nonce_prune
DELETE FROM request_nonces WHERE seen_at < now() - make_interval(secs => $1);
