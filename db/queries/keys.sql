-- name: api_key_insert
INSERT INTO api_keys (key_id, secret, tenant_id) VALUES ($1, $2, $3);

-- name: api_key_get
SELECT k.key_id, k.secret, k.tenant_id, k.revoked_at IS NOT NULL AS revoked,
       coalesce(t.disabled, false) AS tenant_disabled
  FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
 WHERE k.key_id = $1;

-- name: api_key_revoke
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 RETURNING key_id;

-- name: api_key_use
-- A signed request's one statement once the secret is known: the key's standing now, and its
-- nonce recorded unless the key is revoked. The commit does not wait for its WAL flush: a command
-- that follows commits synchronously and so flushes the nonce with it; only a read's nonce can be
-- lost, to a crash within the WAL writer's delay.
WITH k AS (
    SELECT k.key_id, k.tenant_id, k.revoked_at IS NOT NULL AS revoked,
           coalesce(t.disabled, false) AS tenant_disabled,
           set_config('synchronous_commit', 'off', true) AS async_commit
      FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
     WHERE k.key_id = $1
), n AS (
    INSERT INTO request_nonces (key_id, nonce)
    SELECT key_id, $2 FROM k WHERE NOT revoked
    ON CONFLICT DO NOTHING
    RETURNING true
)
SELECT k.tenant_id, k.revoked, k.tenant_disabled, EXISTS (SELECT FROM n) AS fresh FROM k;

-- name: request_nonce_prune
DELETE FROM request_nonces WHERE seen_at < now() - make_interval(secs => $1);
