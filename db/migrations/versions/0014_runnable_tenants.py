"""The fair-share pick walks only tenants that have work somewhere.

0012's pick walks the tenants in pass order and probes runnable_queues for each. A tenant with
nothing to run keeps the pass it had when it went idle, so idle tenants gather at the low end
of the order and every pick walked over all of them: with thousands of idle tenants, thousands
of probes per lease. `tenants.runnable` says whether a tenant has a row in runnable_queues, and
the pass index holds only those tenants.

The flag is set when a (tenant, queue) pair becomes runnable and cleared when the tenant's last
pair is forgotten. It may say true for a tenant without work (the pick passes over it, as
before), never false for one with work: a new pair sets it under a shared lock on the tenant's
key, held to commit, and clearing it takes that lock exclusively without waiting (or leaves
the flag), then checks for pairs in a statement that starts once the lock is held, so it sees
every pair committed before and none can commit meanwhile.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from pathlib import Path

from db._alembic import earlier_function, run_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent

# As 0012's, and only tenants with a runnable pair somewhere.
_ELIGIBLE = """NOT t.disabled AND t.runnable
               AND EXISTS (SELECT 1 FROM runnable_queues r
                            WHERE r.tenant_id = t.id AND r.queue = ANY(p_queues)
                              AND NOT EXISTS (SELECT 1 FROM queue_pauses p
                                               WHERE p.tenant_id = r.tenant_id AND p.queue = r.queue))
               AND (t.max_inflight IS NULL
                    OR t.max_inflight > (SELECT count(*) FROM jobs j WHERE j.tenant_id = t.id AND j.state = 'running'))"""

UPGRADE = f"""
ALTER TABLE tenants ADD COLUMN runnable boolean NOT NULL DEFAULT false;
UPDATE tenants t SET runnable = true WHERE EXISTS (SELECT 1 FROM runnable_queues r WHERE r.tenant_id = t.id);

CREATE FUNCTION orch_tenant_lock_key(p_tenant text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT hashtextextended('orch.runnable-tenant:' || p_tenant, 0) $$;

-- Row-level: it runs only for pairs that are new, not for a submit to a queue already runnable.
CREATE FUNCTION orch_tenant_runnable() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(orch_tenant_lock_key(NEW.tenant_id));
    UPDATE tenants SET runnable = true WHERE id = NEW.tenant_id AND NOT runnable;
    RETURN NULL;
END
$$;

CREATE TRIGGER runnable_queues_tenant AFTER INSERT ON runnable_queues
    FOR EACH ROW EXECUTE FUNCTION orch_tenant_runnable();

-- As 0007's, then the tenant's flag cleared once its last pair is gone (see above).
CREATE OR REPLACE FUNCTION orch_runnable_forget(p_tenant text, p_queues text[]) RETURNS integer
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
    IF forgotten > 0 AND pg_try_advisory_xact_lock(orch_tenant_lock_key(p_tenant)) THEN
        UPDATE tenants t SET runnable = false
         WHERE t.id = p_tenant AND t.runnable
           AND NOT EXISTS (SELECT 1 FROM runnable_queues r WHERE r.tenant_id = p_tenant);
    END IF;
    RETURN forgotten;
END
$$;

DROP INDEX tenants_pass;
CREATE INDEX tenants_pass ON tenants (vpass, id) WHERE NOT disabled AND runnable;

CREATE OR REPLACE FUNCTION orch_tenant_pick(p_queues text[], p_limit integer)
    RETURNS TABLE (id text, max_inflight integer, vpass double precision, lead_pass double precision)
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode = force_generic_plan
    SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.id, c.max_inflight, c.vpass, lead.vpass AS lead_pass
      FROM (SELECT t.id, t.max_inflight, t.vpass FROM tenants t
             WHERE {_ELIGIBLE}
             ORDER BY t.vpass, t.id
             LIMIT p_limit) c
     CROSS JOIN (SELECT t.vpass FROM tenants t
             WHERE {_ELIGIBLE}
             ORDER BY t.vpass DESC, t.id DESC
             LIMIT 1) lead
     ORDER BY c.vpass, c.id;
END
$$;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(
        earlier_function(_HERE / "0012_tenant_pass_index.py", "orch_tenant_pick")
        + earlier_function(_HERE / "0007_cached_plans.py", "orch_runnable_forget")
        + """
DROP INDEX tenants_pass;
CREATE INDEX tenants_pass ON tenants (vpass, id) WHERE NOT disabled;
DROP TRIGGER runnable_queues_tenant ON runnable_queues;
DROP FUNCTION orch_tenant_runnable();
DROP FUNCTION orch_tenant_lock_key(text);
ALTER TABLE tenants DROP COLUMN runnable;
"""
    )
