"""The W3C trace context of a job's submit, handed to its workers.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        "ALTER TABLE jobs ADD COLUMN traceparent text"
        " CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$')"
    )


def downgrade() -> None:
    run_script("ALTER TABLE jobs DROP COLUMN traceparent")
