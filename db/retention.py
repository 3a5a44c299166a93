"""Retention of finished jobs: the policies per tenant and queue, and the pruner's statements.

A retention is seconds (0 keeps nothing) or None (kept for ever); a scope that does not name a
state inherits it: a queue's policy from the tenant-wide one, that from the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from core import JobState

from ._queries import sql
from ._types import Conn

RETAINED_STATES = (JobState.SUCCEEDED, JobState.CANCELLED, JobState.DEAD)
TENANT_WIDE = ""  # the queue of a tenant-wide policy

_LOCK = sql("retention_policy_lock")
_REPLACE = sql("retention_policy_replace")
_GET = sql("retention_policy_get")
_DELETE = sql("retention_policy_delete")
_PRUNE_LOCK = sql("job_prune_lock")
_SCAN = sql("job_retention_scan")
_PRUNE = sql("job_prune")

# What a scope sets, by final state; a state absent inherits.
Keep = Mapping[JobState, int | None]


class RetentionPolicies(msgspec.Struct, frozen=True):
    """A queue's own policy and the tenant-wide one beneath it (the same for a tenant-wide read)."""

    scope: dict[JobState, int | None]
    tenant: dict[JobState, int | None]


async def retention_policy_put(conn: Conn, tenant_id: str, queue: str, keep: Keep) -> None:
    """Replace the scope's policy with `keep` (queue '' is the tenant-wide one). Two statements:
    the caller holds a transaction, so a concurrent replacement waits and one of them wins whole."""
    states = [s for s in RETAINED_STATES if s in keep]
    await conn.execute(_LOCK, tenant_id, queue)
    await conn.execute(_REPLACE, tenant_id, queue, states, [keep[s] for s in states])


async def retention_policy_get(conn: Conn, tenant_id: str, queue: str) -> RetentionPolicies:
    rows = await conn.fetch(_GET, tenant_id, queue)
    scope = {JobState(r["state"]): r["keep_seconds"] for r in rows if r["queue"] == queue}
    tenant = {JobState(r["state"]): r["keep_seconds"] for r in rows if r["queue"] == TENANT_WIDE}
    return RetentionPolicies(scope=scope, tenant=tenant)


async def retention_policy_delete(conn: Conn, tenant_id: str, queue: str) -> bool:
    """Drop the scope's policy; False when it had none."""
    return bool(await conn.fetch(_DELETE, tenant_id, queue))


def retention_in_force(policies: RetentionPolicies, defaults: Keep) -> dict[JobState, int | None]:
    """The retention of each final state: the scope's, else the tenant's, else the deployment's
    (the same precedence as `job_retention_scan`)."""
    out: dict[JobState, int | None] = {}
    for s in RETAINED_STATES:
        for level in (policies.scope, policies.tenant, defaults):
            if s in level:
                out[s] = level[s]
                break
        else:
            out[s] = None
    return out


class RetentionGroup(msgspec.Struct, frozen=True):
    """A tenant's queue's finished jobs of one state, and when the oldest of them falls due."""

    tenant_id: str
    queue: str
    state: JobState
    keep_seconds: float
    due_in: float  # seconds; negative: that long overdue


class Pruned(msgspec.Struct, frozen=True):
    index: int  # of the group in the list given, from 0
    state: JobState
    count: int


async def job_prune_lock(conn: Conn) -> bool:
    """Take the cluster-wide job pruning lock for the caller's transaction; False if another holds it."""
    return bool(await conn.fetchval(_PRUNE_LOCK))


async def job_retention_scan(conn: Conn, defaults: Keep) -> list[RetentionGroup]:
    """Every group of finished jobs with a finite retention; `defaults` are the deployment's."""
    states = list(RETAINED_STATES)
    seconds = [None if (v := defaults.get(s)) is None else float(v) for s in states]
    rows = await conn.fetch(_SCAN, states, seconds)
    return [
        RetentionGroup(r["tenant_id"], r["queue"], JobState(r["state"]), r["keep_seconds"], r["due_in"]) for r in rows
    ]


async def job_prune(conn: Conn, groups: Sequence[RetentionGroup], limit: int) -> list[Pruned]:
    """Delete up to `limit` jobs past their retention from `groups`, in order, oldest first."""
    rows = await conn.fetch(
        _PRUNE,
        [g.tenant_id for g in groups],
        [g.queue for g in groups],
        [g.state for g in groups],
        [g.keep_seconds for g in groups],
        limit,
    )
    return [Pruned(r["ord"] - 1, JobState(r["state"]), r["n"]) for r in rows]
