"""Cron schedules, and the record of each due time fired.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UP = r"""
-- A tenant's recurring job. next_fire_at is computed in Python (core.cron) from cron and timezone.
CREATE TABLE schedules (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    queue         text NOT NULL CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    kind          text NOT NULL DEFAULT '',
    payload       jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer CHECK (max_attempts BETWEEN 1 AND 100),
    paused        boolean NOT NULL DEFAULT false,
    next_fire_at  timestamptz NOT NULL,
    last_fired_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_tenant_name UNIQUE (tenant_id, name)
);
-- The firing loop's pick of due schedules and its timer to the next one.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused;

-- One row per due time fired: the primary key, not a lock, makes each due time fire exactly
-- once however many gateways tick. job_id has no foreign key so job retention stays free.
CREATE TABLE schedule_fires (
    schedule_id bigint NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at     timestamptz NOT NULL,
    job_id      bigint,
    PRIMARY KEY (schedule_id, fire_at)
);
"""

DOWN = r"""
DROP TABLE schedule_fires;
DROP TABLE schedules;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
