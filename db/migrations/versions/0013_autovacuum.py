"""Autovacuum by absolute counts on the tables the queue churns: jobs, events, request_nonces.

Every job is inserted, updated twice and deleted by retention, and writes three events that
retention deletes too. At the defaults a table is vacuumed once a fifth of it is dead: on a
jobs table keeping a week of finished jobs that is millions of dead rows, which the table and
its indexes grow by before autovacuum comes. Here a table is due once 1,000 rows plus 1 % of it
are dead (under load, at every autovacuum_naptime), and its vacuum is not throttled, so that
it keeps pace with the load. The bench's soak phase measures it (docs/benchmarks.md).

No fillfactor: the updates of jobs change `state`, which every partial index's predicate reads,
or `lease_expires_at`, which jobs_running_expiry indexes, so none can be a HOT update (the soak
counts none) and free room on the page would only be empty. The other tables the load changes
are small: tenants (a pass update per shared lease), event_retention (HOT updates, a prune pass
each) and runnable_queues (a few rows), and the default trigger of 50 dead rows plus a fifth
passes for them every naptime.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UP = r"""
ALTER TABLE jobs SET (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0.01,
                      autovacuum_vacuum_cost_delay = 0);
ALTER TABLE events SET (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0.01,
                        autovacuum_vacuum_cost_delay = 0);
ALTER TABLE request_nonces SET (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0.01,
                                autovacuum_vacuum_cost_delay = 0);
"""

DOWN = r"""
ALTER TABLE request_nonces RESET (autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor,
                                  autovacuum_vacuum_cost_delay);
ALTER TABLE events RESET (autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor, autovacuum_vacuum_cost_delay);
ALTER TABLE jobs RESET (autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor, autovacuum_vacuum_cost_delay);
"""


def upgrade() -> None:
    run_script(UP)


def downgrade() -> None:
    run_script(DOWN)
