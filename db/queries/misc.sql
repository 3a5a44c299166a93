-- name: ping
SELECT 1;

-- name: notify_probe
-- The readiness probe: a notification this process's LISTEN connection must receive.
SELECT pg_notify('orch_probe', $1);
