"""A lease that applies the tenant's in-flight cap itself: one round trip whatever the tenant,
where a capped tenant took a transaction of four statements and every pinned lease a lookup of
its tenant first.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
-- Reads the tenant's cap; under it, takes the tenant's in-flight lock (an advisory lock held to
-- the end of the caller's transaction: the statement's own when called alone) and counts its
-- running jobs in a new snapshot, which sees every lease committed before the lock was granted,
-- so no two leases can both fill the last place. Uncapped tenants never take the lock.
CREATE FUNCTION orch_job_lease_capped(p_tenant text, p_queues text[], p_limit integer,
                                      p_lease_seconds integer, p_worker text,
                                      p_pass_floor double precision, p_fifo boolean)
    RETURNS SETOF jobs
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    cap integer;
    room bigint;
BEGIN
    SELECT t.max_inflight INTO cap FROM tenants t WHERE t.id = p_tenant;
    IF cap IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('orch.inflight:' || p_tenant, 0));
        SELECT cap - count(*) INTO room FROM jobs r WHERE r.tenant_id = p_tenant AND r.state = 'running';
        IF room <= 0 THEN
            RETURN;
        END IF;
        p_limit := least(p_limit, room);
    END IF;
    RETURN QUERY SELECT * FROM orch_job_lease(p_tenant, p_queues, p_limit, p_lease_seconds, p_worker,
                                              p_pass_floor, p_fifo);
END
$$;
"""

DOWNGRADE = """
DROP FUNCTION orch_job_lease_capped(text, text[], integer, integer, text, double precision, boolean);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
