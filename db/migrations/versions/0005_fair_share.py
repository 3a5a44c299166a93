"""Weighted fair share between tenants, queue pauses, and the FIFO guard against starvation.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UP = r"""
-- Stride scheduling: a tenant's pass grows by leased jobs / weight; the lowest pass leases next.
ALTER TABLE tenants ADD COLUMN vpass double precision NOT NULL DEFAULT 0;

-- The (tenant, queue) pairs that may hold ready jobs, so picking a tenant reads this small table
-- and never the jobs table. Rows appear in the transaction that makes a job ready and are
-- forgotten when a lease finds the pair empty (see runnable_queue_forget).
CREATE TABLE runnable_queues (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    queue     text NOT NULL,
    PRIMARY KEY (tenant_id, queue)
);

CREATE TABLE queue_pauses (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    queue     text NOT NULL CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, queue)
);

-- The starvation guard's lease order: oldest first, whatever the priority.
CREATE INDEX jobs_ready_fifo ON jobs (tenant_id, queue, id) WHERE state = 'ready';

CREATE FUNCTION orch_queue_lock_key(p_tenant text, p_queue text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended('orch.runnable:' || p_tenant || '/' || p_queue, 0) $$;

CREATE OR REPLACE FUNCTION orch_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF groups > 0 THEN
        -- Held shared until commit: forgetting a pair takes it exclusively, so it waits for us.
        PERFORM pg_advisory_xact_lock_shared(orch_queue_lock_key(tenant_id, queue))
           FROM (SELECT DISTINCT tenant_id, queue FROM new_rows WHERE state = 'ready') d;
        INSERT INTO runnable_queues (tenant_id, queue)
        SELECT DISTINCT tenant_id, queue FROM new_rows WHERE state = 'ready'
        ON CONFLICT DO NOTHING;
    END IF;
    IF groups > 32 THEN
        ready := json_build_array(json_build_array('*', '*', total));
    END IF;
    PERFORM pg_notify('orch_jobs', json_build_object('r', coalesce(ready, '[]'::json), 's', next_run)::text);
    RETURN NULL;
END
$$;

INSERT INTO runnable_queues (tenant_id, queue)
SELECT DISTINCT tenant_id, queue FROM jobs WHERE state = 'ready'
ON CONFLICT DO NOTHING;
"""

DOWN = r"""
CREATE OR REPLACE FUNCTION orch_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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
DROP FUNCTION orch_queue_lock_key(text, text);
DROP INDEX jobs_ready_fifo;
DROP TABLE queue_pauses;
DROP TABLE runnable_queues;
ALTER TABLE tenants DROP COLUMN vpass;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
