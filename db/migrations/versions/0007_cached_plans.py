"""Statements that PostgreSQL planned afresh on every call, as PL/pgSQL functions whose plans are
kept for the session; the forgetting of a runnable pair in one round trip.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from db._alembic import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The lease statement; the starvation guard's variant takes the oldest jobs whatever the priority.
_LEASE = """        WITH picked AS (
            -- One ordered index scan per queue (a list of queues cannot be read in priority order by
            -- one scan), each locking at most $3 rows, then the best $3 of them.
            SELECT x.id
              FROM unnest(ARRAY(SELECT unnest($2::text[])
                                EXCEPT SELECT queue FROM queue_pauses WHERE tenant_id = $1)) AS q(queue)
             CROSS JOIN LATERAL (
                    SELECT id, priority FROM jobs
                     WHERE tenant_id = $1 AND queue = q.queue AND state = 'ready'
                     ORDER BY {order}
                     LIMIT $3
                       FOR UPDATE SKIP LOCKED) x
             ORDER BY {order}
             LIMIT $3
        ), leased AS (
            UPDATE jobs j
               SET state = 'running',
                   attempts = j.attempts + 1,
                   lease_token = nextval('lease_token_seq'),
                   lease_expires_at = now() + make_interval(secs => least($4, coalesce(j.timeout_seconds, $4))),
                   started_at = now(),
                   worker_id = $5
             -- By the primary key whatever the estimate: a generic plan guesses a tenth of the
             -- table for LIMIT $3, and would join that many rows to a scan of jobs.
             WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
            RETURNING j.*
        ), ev AS (
            INSERT INTO events (tenant_id, job_id, queue, type, data)
            SELECT tenant_id, id, queue, 'job.started',
                   jsonb_build_object('attempt', attempts, 'worker_id', worker_id, 'lease_token', lease_token)
              FROM leased ORDER BY id
        ), pass AS (
            UPDATE tenants t
               SET vpass = greatest(t.vpass, $6::float8) + (SELECT count(*) FROM leased)::float8 / t.weight
             WHERE t.id = $1 AND $6::float8 IS NOT NULL AND EXISTS (SELECT 1 FROM leased)
        )
        SELECT * FROM leased ORDER BY priority DESC, id"""

UPGRADE = """
-- A SQL function in FROM is planned on each call of its statement; PL/pgSQL keeps the plan.
CREATE OR REPLACE FUNCTION orch_retry_policy(p_tenant text, p_queue text,
                                             OUT max_attempts integer, OUT retry_base_ms bigint,
                                             OUT retry_cap_ms bigint)
    LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    SELECT (array_agg(rp.max_attempts ORDER BY rp.queue = '') FILTER (WHERE rp.max_attempts IS NOT NULL))[1],
           (array_agg(rp.retry_base_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_base_ms IS NOT NULL))[1],
           (array_agg(rp.retry_cap_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_cap_ms IS NOT NULL))[1]
      INTO max_attempts, retry_base_ms, retry_cap_ms
      FROM retry_policies rp
     WHERE rp.tenant_id = p_tenant AND rp.queue IN (p_queue, '');
END
$$;

-- Weighted fair share (stride scheduling): of the tenants that may have ready jobs in these
-- queues, are enabled, not paused there and below their in-flight cap, the least served first.
-- Reads runnable_queues and tenants, never a scan of jobs; capped tenants count their running
-- jobs through jobs_running_tenant (at most the cap's worth of entries). As a prepared statement
-- it was planned afresh on every call (0.4 ms, four times its execution): the generic plan is
-- the same plan.
CREATE FUNCTION orch_tenant_pick(p_queues text[], p_limit integer)
    RETURNS TABLE (id text, max_inflight integer, vpass double precision, lead_pass double precision)
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT t.id, t.max_inflight, t.vpass, max(t.vpass) OVER () AS lead_pass
      FROM tenants t
     WHERE t.id IN (SELECT r.tenant_id FROM runnable_queues r
                     WHERE r.queue = ANY(p_queues)
                       AND NOT EXISTS (SELECT 1 FROM queue_pauses p
                                        WHERE p.tenant_id = r.tenant_id AND p.queue = r.queue))
       AND NOT t.disabled
       AND (t.max_inflight IS NULL
            OR t.max_inflight > (SELECT count(*) FROM jobs r WHERE r.tenant_id = t.id AND r.state = 'running'))
     ORDER BY t.vpass, t.id
     LIMIT p_limit;
END
$$;

-- Forgets the tenant's pairs that hold no ready job, in one round trip: the pair locks are tried
-- first (transactions making jobs ready hold them shared until they commit), then each check, a
-- new statement of a volatile function and so with a new snapshot, sees every job made ready
-- before the locks were granted. The locks are held to the end of the caller's transaction.
-- One pair at a time: the check is then one probe of jobs_ready whatever the plan, where a
-- generic plan of a set-wise anti-join may hash every ready job of the table.
CREATE FUNCTION orch_runnable_forget(p_tenant text, p_queues text[]) RETURNS integer
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q text;
    forgotten integer := 0;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(orch_queue_lock_key(p_tenant, q));
        CONTINUE WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = p_tenant AND j.queue = q AND j.state = 'ready');
        DELETE FROM runnable_queues r WHERE r.tenant_id = p_tenant AND r.queue = q;
        IF FOUND THEN
            forgotten := forgotten + 1;
        END IF;
    END LOOP;
    RETURN forgotten;
END
$$;

-- A lease: Bounded SKIP LOCKED pick inside the CTE: at most $3 rows per queue are ever locked. Paused
-- queues are left out. A shared lease advances the tenant's pass by jobs / weight, first lifting
-- it to $6 (the leading pass less a small credit; NULL for pinned leases), so that a tenant that
-- was idle or new joins near the others instead of monopolising the workers until it catches up.
-- As a prepared statement PostgreSQL re-planned it on every call once the table was large (its
-- generic plan, the same plan, is costed for an unknown LIMIT and list of queues); here it keeps
-- the generic plan. p_fifo: the starvation guard's variant, oldest first whatever the priority.
CREATE FUNCTION orch_job_lease(p_tenant text, p_queues text[], p_limit integer, p_lease_seconds integer,
                               p_worker text, p_pass_floor double precision, p_fifo boolean)
    RETURNS SETOF jobs
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    IF p_fifo THEN
        RETURN QUERY
""" + _LEASE.format(order="id") + """;
    ELSE
        RETURN QUERY
""" + _LEASE.format(order="priority DESC, id") + """;
    END IF;
END
$$;
"""

DOWNGRADE = """
DROP FUNCTION orch_job_lease(text, text[], integer, integer, text, double precision, boolean);
DROP FUNCTION orch_runnable_forget(text, text[]);
DROP FUNCTION orch_tenant_pick(text[], integer);
CREATE OR REPLACE FUNCTION orch_retry_policy(p_tenant text, p_queue text,
                                             OUT max_attempts integer, OUT retry_base_ms bigint,
                                             OUT retry_cap_ms bigint)
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (array_agg(rp.max_attempts ORDER BY rp.queue = '') FILTER (WHERE rp.max_attempts IS NOT NULL))[1],
           (array_agg(rp.retry_base_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_base_ms IS NOT NULL))[1],
           (array_agg(rp.retry_cap_ms ORDER BY rp.queue = '') FILTER (WHERE rp.retry_cap_ms IS NOT NULL))[1]
      FROM retry_policies rp
     WHERE rp.tenant_id = p_tenant AND rp.queue IN (p_queue, '')
$$;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
