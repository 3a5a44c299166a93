"""Tenants, API keys, request nonces, jobs and events, with the NOTIFY triggers.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UP = r"""
CREATE TYPE job_state AS ENUM ('scheduled', 'ready', 'running', 'succeeded', 'dead', 'cancelled');

CREATE TABLE tenants (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name         text NOT NULL DEFAULT '',
    weight       integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 10000),
    max_inflight integer CHECK (max_inflight >= 0),
    disabled     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- tenant_id NULL: a shared worker key, created by the operator, belonging to no tenant.
CREATE TABLE api_keys (
    key_id     text PRIMARY KEY,
    secret     text NOT NULL,
    tenant_id  text REFERENCES tenants (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Nonces accepted within the signature window; a replay hits the primary key.
CREATE TABLE request_nonces (
    key_id  text NOT NULL,
    nonce   text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX request_nonces_seen_at ON request_nonces (seen_at);

-- Full-jitter exponential backoff; core.retry holds the same formula for the Python side.
CREATE FUNCTION orch_backoff_ms(attempt integer, base_ms bigint, cap_ms bigint, jitter float8)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(least(cap_ms::float8, base_ms::float8 * power(2::float8, least(greatest(attempt, 1) - 1, 60))) * jitter)::bigint $$;

-- Fencing tokens: a new one for every lease, never reused.
CREATE SEQUENCE lease_token_seq;

CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    queue            text NOT NULL CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    kind             text NOT NULL DEFAULT '',
    payload          jsonb NOT NULL DEFAULT '{}',
    priority         integer NOT NULL DEFAULT 0,
    state            job_state NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    result           jsonb,
    last_error       text,
    idempotency_key  text,
    timeout_seconds  integer CHECK (timeout_seconds > 0),
    lease_token      bigint,
    lease_expires_at timestamptz,
    worker_id        text,
    cancel_requested boolean NOT NULL DEFAULT false,
    CONSTRAINT jobs_attempts_range CHECK (attempts >= 0 AND attempts <= max_attempts AND max_attempts >= 1),
    CONSTRAINT jobs_finished_iff_terminal
        CHECK ((state IN ('succeeded', 'dead', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_lease_iff_running
        CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT jobs_running_has_token CHECK (state <> 'running' OR lease_token IS NOT NULL),
    CONSTRAINT jobs_started_when_run CHECK (state NOT IN ('running', 'succeeded') OR started_at IS NOT NULL)
);

-- The lease path: ready jobs of one tenant and queue, highest priority first, FIFO within it.
CREATE INDEX jobs_ready ON jobs (tenant_id, queue, priority DESC, id) WHERE state = 'ready';
-- Promotion of due jobs and the timer to the next one.
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
-- The reaper, and counting a tenant's running jobs against its cap.
CREATE INDEX jobs_running_expiry ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_running_tenant ON jobs (tenant_id) WHERE state = 'running';
-- Listing a tenant's jobs, newest first.
CREATE INDEX jobs_tenant_recent ON jobs (tenant_id, id DESC);
CREATE INDEX jobs_tenant_state_recent ON jobs (tenant_id, state, id DESC);
-- Idempotency: a constraint, not a lock.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The outbox: one row per state change, written in the transaction of the change.
-- xid records the writing transaction so readers can tell what may still commit below them.
CREATE TABLE events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id text NOT NULL,
    job_id    bigint NOT NULL,
    queue     text NOT NULL,
    type      text NOT NULL CHECK (type IN ('job.created', 'job.started', 'job.succeeded',
                  'job.retry_scheduled', 'job.dead', 'job.cancelled', 'job.replayed')),
    at        timestamptz NOT NULL DEFAULT now(),
    data      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_job ON events (job_id, id);

-- One NOTIFY per statement naming what became ready (tenant, queue, count) and the earliest
-- new run_at of scheduled jobs, so waiting long-polls and the promotion timer wake at once.
CREATE FUNCTION orch_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ready json;
    groups integer;
    total bigint;
    next_run double precision;
BEGIN
    SELECT count(*), sum(n), json_agg(json_build_array(tenant_id, queue, n))
      INTO groups, total, ready
      FROM (SELECT tenant_id, queue, count(*) AS n FROM new_rows
             WHERE state = 'ready' GROUP BY tenant_id, queue) g;
    SELECT extract(epoch FROM min(run_at)) INTO next_run FROM new_rows WHERE state = 'scheduled';
    IF groups = 0 AND next_run IS NULL THEN
        RETURN NULL;
    END IF;
    IF groups > 32 THEN
        ready := json_build_array(json_build_array('*', '*', total));
    END IF;
    PERFORM pg_notify('orch_jobs', json_build_object('r', coalesce(ready, '[]'::json), 's', next_run)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION orch_jobs_notify();
CREATE TRIGGER jobs_notify_update AFTER UPDATE ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION orch_jobs_notify();

-- One NOTIFY per statement writing events: the tenants concerned and the jobs that ended,
-- so event readers and `GET /v1/jobs/{id}?wait_ms=` wake without polling.
CREATE FUNCTION orch_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tenants json;
    ended json;
    n_ended integer;
BEGIN
    SELECT json_agg(DISTINCT tenant_id) INTO tenants FROM new_rows;
    IF tenants IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT count(*), json_agg(job_id) INTO n_ended, ended FROM new_rows
     WHERE type IN ('job.succeeded', 'job.dead', 'job.cancelled');
    IF n_ended > 100 OR json_array_length(tenants) > 32 THEN
        PERFORM pg_notify('orch_events', '{"all":true}');
    ELSE
        PERFORM pg_notify('orch_events', json_build_object('t', tenants, 'j', coalesce(ended, '[]'::json))::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION orch_events_notify();
"""

DOWN = r"""
DROP TRIGGER events_notify ON events;
DROP FUNCTION orch_events_notify();
DROP TABLE events;
DROP TRIGGER jobs_notify_update ON jobs;
DROP TRIGGER jobs_notify_insert ON jobs;
DROP FUNCTION orch_jobs_notify();
DROP TABLE jobs;
DROP SEQUENCE lease_token_seq;
DROP TABLE request_nonces;
DROP TABLE api_keys;
DROP TABLE tenants;
DROP FUNCTION orch_backoff_ms(integer, bigint, bigint, float8);
DROP TYPE job_state;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
