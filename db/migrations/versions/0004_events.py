"""Events as a product: reading in (xid, id) order, durable consumers, webhooks, retention.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UP = r"""
-- Readers page through a tenant's events in (xid, id) order (docs/events.md); this index
-- replaces the one in id order, so an event insert still maintains a single tenant index.
CREATE INDEX events_tenant_xid ON events (tenant_id, xid, id);
DROP INDEX events_tenant;

-- How far retention has pruned each tenant's events. Every event at or before the horizon
-- counts as pruned: a cursor before it may have missed events (410); fresh reads start at it.
CREATE TABLE event_retention (
    tenant_id   text PRIMARY KEY,
    horizon_xid xid8 NOT NULL,
    horizon_id  bigint NOT NULL,
    pruned_at   timestamptz NOT NULL DEFAULT now()
);

-- Named, server-side cursors: each consumer reads from its position and moves it by acknowledging.
CREATE TABLE consumers (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    cursor_xid xid8 NOT NULL,
    cursor_id  bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Webhook endpoints with their delivery cursor. attempts counts the failed deliveries of the
-- event at the cursor; after the configured number the endpoint is parked until resumed.
CREATE TABLE webhooks (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url               text NOT NULL CHECK (url ~* '^https?://'),
    event_types       text[] NOT NULL DEFAULT '{}' CHECK (event_types <@ ARRAY['job.created', 'job.started',
                          'job.succeeded', 'job.retry_scheduled', 'job.dead', 'job.cancelled', 'job.replayed']),
    secret            text NOT NULL,
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'parked')),
    cursor_xid        xid8 NOT NULL,
    cursor_id         bigint NOT NULL,
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    delivered         bigint NOT NULL DEFAULT 0,
    last_status       integer,
    last_error        text,
    last_attempt_at   timestamptz,
    last_delivered_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, id);
-- The publisher's pick of endpoints due for an attempt.
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE state = 'active';
"""

DOWN = r"""
DROP TABLE webhooks;
DROP TABLE consumers;
DROP TABLE event_retention;
CREATE INDEX events_tenant ON events (tenant_id, id);
DROP INDEX events_tenant_xid;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
