"""Webhook endpoints are delivered under a lease kept in their row, not a session advisory lock:
a lock held by a server session does not survive transaction pooling (PgBouncer), a row does.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UP = r"""
-- Which gateway process delivers the endpoint and until when (database clock); NULL: nobody.
-- A process that dies leaves a lease that runs out, and the next claim takes it over.
-- lease_token grows with every claim: the holder's writes name it, so a holder that lost its
-- lease (stalled past lease_until, taken over) can no longer move the cursor.
ALTER TABLE webhooks
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN lease_token bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT webhooks_lease_check CHECK ((lease_owner IS NULL) = (lease_until IS NULL));
"""

DOWN = r"""
ALTER TABLE webhooks
    DROP CONSTRAINT webhooks_lease_check,
    DROP COLUMN lease_token,
    DROP COLUMN lease_until,
    DROP COLUMN lease_owner;
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
