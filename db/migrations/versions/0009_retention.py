"""Retention of finished jobs: policies per tenant and queue, and the index the pruner reads.

Building jobs_finished holds a write lock on jobs while it scans the table. On a large table,
build it first without one (`CREATE INDEX CONCURRENTLY jobs_finished ON jobs (tenant_id, queue,
state, finished_at) WHERE state IN ('succeeded', 'cancelled', 'dead')`): the migration then
finds it and skips it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UP = r"""
-- One row per scope and final state: queue '' is the tenant-wide row, a queue's own row wins
-- over it, and a state with neither falls back to the deployment's setting. keep_seconds NULL
-- keeps the jobs for ever.
CREATE TABLE retention_policies (
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    queue        text NOT NULL CHECK (queue = '' OR queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    state        job_state NOT NULL CHECK (state IN ('succeeded', 'cancelled', 'dead')),
    keep_seconds bigint CHECK (keep_seconds >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, queue, state)
);

-- Finished jobs by (tenant, queue), final state and age. One retention applies to each
-- (tenant, queue, state) range, so a prune reads only rows it deletes, however long another
-- tenant or queue keeps its jobs; the leading pair lets a pass list the pairs with one probe each.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (tenant_id, queue, state, finished_at)
    WHERE state IN ('succeeded', 'cancelled', 'dead');

-- The fire records naming a job, so the pruner can clear job_id when it deletes the job.
CREATE INDEX schedule_fires_job ON schedule_fires (job_id) WHERE job_id IS NOT NULL;
"""

DOWN = r"""
DROP INDEX schedule_fires_job;
DROP INDEX jobs_finished;
DROP TABLE retention_policies;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
