"""Retry policies per tenant and queue, and per job.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UP = r"""
-- queue '' is the tenant-wide default; a queue's own row wins over it.
CREATE TABLE retry_policies (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    queue         text NOT NULL CHECK (queue = '' OR queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    max_attempts  integer CHECK (max_attempts BETWEEN 1 AND 100),
    retry_base_ms bigint CHECK (retry_base_ms >= 0),
    retry_cap_ms  bigint CHECK (retry_cap_ms >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, queue)
);

-- The policy in force for a tenant's queue: the queue's own settings over the tenant-wide ones;
-- NULL where neither sets a value (the deployment default applies).
CREATE FUNCTION orch_retry_policy(p_tenant text, p_queue text,
                                  OUT max_attempts integer, OUT retry_base_ms bigint, OUT retry_cap_ms bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (array_agg(rp.max_attempts ORDER BY rp.queue = '') FILTER (WHERE rp.max_attempts IS NOT NULL))[1],
           (array_agg(rp.retry_base_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_base_ms IS NOT NULL))[1],
           (array_agg(rp.retry_cap_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_cap_ms IS NOT NULL))[1]
      FROM retry_policies rp
     WHERE rp.tenant_id = p_tenant AND rp.queue IN (p_queue, '')
$$;

ALTER TABLE jobs
    ADD COLUMN retry_base_ms bigint CHECK (retry_base_ms >= 0),
    ADD COLUMN retry_cap_ms bigint CHECK (retry_cap_ms >= 0);

-- Replaying the dead-letter queue of a tenant, oldest first.
CREATE INDEX jobs_dead ON jobs (tenant_id, id) WHERE state = 'dead';
"""

DOWN = r"""
DROP INDEX jobs_dead;
ALTER TABLE jobs DROP COLUMN retry_cap_ms, DROP COLUMN retry_base_ms;
DROP FUNCTION orch_retry_policy(text, text);
DROP TABLE retry_policies;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
