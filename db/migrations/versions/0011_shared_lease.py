"""A shared worker's lease in one statement: the fair-share pick and the lease from each candidate.

A shared lease was a statement to pick the least-served tenants, then one lease statement per
candidate until the slots were filled. On a woken long-poll those were two round trips or more
before the worker had its job; the loop now runs in the database.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
-- Candidates in pick order (least pass by weight first); each leases from the slots still free,
-- the first candidate's lead pass less p_join_credit as every candidate's pass floor, as the
-- gateway did. A candidate that leased nothing has its pairs forgotten here, unless a
-- transaction is making a job ready in them. The rows come candidate by candidate.
CREATE FUNCTION orch_job_lease_shared(p_queues text[], p_workers text[], p_lease_seconds integer,
                                      p_candidates integer, p_join_credit double precision, p_fifo boolean)
    RETURNS SETOF jobs
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    c record;
    v_floor double precision;
    v_left text[] := p_workers;
    v_got integer;
BEGIN
    FOR c IN SELECT * FROM orch_tenant_pick(p_queues, p_candidates) LOOP
        v_floor := coalesce(v_floor, c.lead_pass - p_join_credit);
        RETURN QUERY SELECT * FROM orch_job_lease_capped(c.id, p_queues, v_left, p_lease_seconds, v_floor, p_fifo);
        GET DIAGNOSTICS v_got = ROW_COUNT;
        IF v_got = 0 THEN
            PERFORM orch_runnable_forget(c.id, p_queues);
        END IF;
        v_left := v_left[v_got + 1:];
        EXIT WHEN coalesce(cardinality(v_left), 0) = 0;
    END LOOP;
END
$$;
"""

DOWNGRADE = """
DROP FUNCTION orch_job_lease_shared(text[], text[], integer, integer, double precision, boolean);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
