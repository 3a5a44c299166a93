"""One lease statement for many waiting workers, applying the tenant's in-flight cap itself.

A lease now takes one slot per job wanted, each naming the worker it is for, so the gateway can
answer many parked long-polls woken by one notification with one statement instead of one each,
and a capped tenant takes one round trip where it took a transaction of four statements.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from db._alembic import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The pick, as in 0007: one ordered index scan per queue, each locking at most as many rows as
# there are slots, then the best of them; the starvation guard's variant takes the oldest.
_PICK = """ARRAY(
            SELECT x.id
              FROM unnest(ARRAY(SELECT unnest(p_queues)
                                EXCEPT SELECT queue FROM queue_pauses WHERE tenant_id = p_tenant)) AS q(queue)
             CROSS JOIN LATERAL (
                    SELECT id, priority FROM jobs
                     WHERE tenant_id = p_tenant AND queue = q.queue AND state = 'ready'
                     ORDER BY {order}
                     LIMIT v_limit
                       FOR UPDATE SKIP LOCKED) x
             ORDER BY {order}
             LIMIT v_limit)"""

UPGRADE = (
    """
DROP FUNCTION orch_job_lease(text, text[], integer, integer, text, double precision, boolean);

-- Leases up to one job per slot of p_workers; the k-th job picked goes to the k-th slot's worker.
-- A shared lease (p_pass_floor not NULL) advances the tenant's pass by jobs / weight, first lifting
-- it to p_pass_floor, as in 0005. The plan is kept for the session (see 0007).
CREATE FUNCTION orch_job_lease_slots(p_tenant text, p_queues text[], p_workers text[], p_lease_seconds integer,
                                     p_pass_floor double precision, p_fifo boolean)
    RETURNS SETOF jobs
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_limit integer := coalesce(cardinality(p_workers), 0);
    v_ids bigint[];
BEGIN
    IF v_limit = 0 THEN
        RETURN;
    END IF;
    IF p_fifo THEN
        v_ids := """
    + _PICK.format(order="id")
    + """;
    ELSE
        v_ids := """
    + _PICK.format(order="priority DESC, id")
    + """;
    END IF;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH leased AS (
        UPDATE jobs j
           SET state = 'running',
               attempts = j.attempts + 1,
               lease_token = nextval('lease_token_seq'),
               lease_expires_at = now() + make_interval(secs => least(p_lease_seconds,
                                                                      coalesce(j.timeout_seconds, p_lease_seconds))),
               started_at = now(),
               worker_id = p_workers[array_position(v_ids, j.id)]
         -- By the primary key whatever the estimate (see 0007).
         WHERE j.id = ANY (v_ids)
        RETURNING j.*
    ), ev AS (
        INSERT INTO events (tenant_id, job_id, queue, type, data)
        SELECT l.tenant_id, l.id, l.queue, 'job.started',
               jsonb_build_object('attempt', l.attempts, 'worker_id', l.worker_id, 'lease_token', l.lease_token)
          FROM leased l ORDER BY l.id
    ), pass AS (
        UPDATE tenants t
           SET vpass = greatest(t.vpass, p_pass_floor) + (SELECT count(*) FROM leased)::float8 / t.weight
         WHERE t.id = p_tenant AND p_pass_floor IS NOT NULL AND EXISTS (SELECT 1 FROM leased)
    )
    SELECT * FROM leased l ORDER BY l.priority DESC, l.id;
END
$$;

-- Reads the tenant's cap; under it, takes the tenant's in-flight lock (an advisory lock held to
-- the end of the caller's transaction: the statement's own when called alone) and counts its
-- running jobs in a new snapshot, which sees every lease committed before the lock was granted,
-- so no two leases can both fill the last place. Uncapped tenants never take the lock.
CREATE FUNCTION orch_job_lease_capped(p_tenant text, p_queues text[], p_workers text[], p_lease_seconds integer,
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
        IF room < cardinality(p_workers) THEN
            p_workers := p_workers[1:room];
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM orch_job_lease_slots(p_tenant, p_queues, p_workers, p_lease_seconds,
                                                    p_pass_floor, p_fifo);
END
$$;
"""
)

DOWNGRADE = """
DROP FUNCTION orch_job_lease_capped(text, text[], text[], integer, double precision, boolean);
DROP FUNCTION orch_job_lease_slots(text, text[], text[], integer, double precision, boolean);
"""


def _0007_lease() -> str:
    """0007's lease function, exactly as it created it, for the downgrade."""
    spec = importlib.util.spec_from_file_location("_rev_0007", Path(__file__).with_name("0007_cached_plans.py"))
    if spec is None or spec.loader is None:
        raise RuntimeError("migration 0007 not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.UPGRADE
    return text[text.index("CREATE FUNCTION orch_job_lease(") :]


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE + _0007_lease())
