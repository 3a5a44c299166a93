"""Operator routes under /v1/admin (bearer admin token)."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

import db
from core import Conflict, EventType, InvalidInput, JobState, NotFound, parse_uint, signing
from core.wire import (
    MAX_JOB_EVENTS,
    AdminJob,
    AdminJobList,
    AdminScheduleList,
    ApiKey,
    ApiKeyList,
    JobDetail,
    QueueList,
    Reaped,
    Replay,
    Replayed,
    Tenant,
    TenantCreate,
    TenantCreated,
    TenantDeleted,
    TenantList,
    TenantPatch,
    TenantWebhook,
    TenantWebhookList,
    WorkerList,
)

from ..auth import operator, runtime_of
from ..runtime import Runtime
from ..services import reaper
from . import _openapi, _paths
from ._body import Body


async def _new_key(conn: Any, tenant_id: str | None) -> str:
    key_id, secret = signing.new_api_key("tk" if tenant_id is not None else "wk")
    await db.api_key_insert(conn, key_id, secret, tenant_id)
    return f"{key_id}.{secret}"


class AdminController(Controller):
    path = "/v1/admin"
    guards = [operator]
    tags = ["operator"]

    @post(
        "/tenants",
        status_code=201,
        summary="Create a tenant and its first API key",
        responses=_openapi.problems({409: "A tenant with this id exists."}),
        dto=Body[TenantCreate],
        return_dto=None,
    )
    async def create_tenant(self, request: Request[Any, Any, Any], data: JSONBody[TenantCreate]) -> TenantCreated:
        rt = runtime_of(request)
        async with rt.pool.acquire() as conn, conn.transaction():
            tenant = await db.tenant_insert(conn, data.id, data.name, data.weight, data.max_inflight)
            if tenant is None:
                raise Conflict(f"tenant {data.id} exists")
            api_key = await _new_key(conn, tenant.id)
        return TenantCreated(tenant=tenant, api_key=api_key)

    @get("/tenants", summary="List tenants")
    async def list_tenants(self, request: Request[Any, Any, Any]) -> TenantList:
        async with runtime_of(request).pool.acquire() as conn:
            return TenantList(tenants=await db.tenant_list(conn))

    @get("/tenants/{tenant_id:str}", summary="Get a tenant")
    async def get_tenant(self, request: Request[Any, Any, Any], tenant_id: FromPath[str]) -> Tenant:
        async with runtime_of(request).pool.acquire() as conn:
            tenant = await db.tenant_get(conn, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id}")
        return tenant

    @patch(
        "/tenants/{tenant_id:str}",
        summary="Change a tenant's weight, in-flight cap, name or disabled flag",
        dto=Body[TenantPatch],
        return_dto=None,
    )
    async def patch_tenant(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], data: JSONBody[TenantPatch]
    ) -> Tenant:
        async with runtime_of(request).pool.acquire() as conn:
            tenant = await db.tenant_update(
                conn,
                tenant_id,
                name=data.name,
                weight=data.weight,
                max_inflight=data.max_inflight,
                disabled=data.disabled,
            )
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id}")
        return tenant

    @post("/tenants/{tenant_id:str}/keys", status_code=201, summary="Create another API key for a tenant")
    async def create_tenant_key(self, request: Request[Any, Any, Any], tenant_id: FromPath[str]) -> ApiKey:
        async with runtime_of(request).pool.acquire() as conn, conn.transaction():
            if await db.tenant_get(conn, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
            return ApiKey(api_key=await _new_key(conn, tenant_id))

    @delete("/keys/{key_id:str}", status_code=204, summary="Revoke a key, at once")
    async def revoke_key(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[None]:
        async with runtime_of(request).pool.acquire() as conn:
            if not await db.api_key_revoke(conn, key_id):
                raise NotFound(f"no key {key_id}")
        return Response(None, status_code=204)

    @post("/worker-keys", status_code=201, summary="Create a shared worker key (serves every tenant)")
    async def create_worker_key(self, request: Request[Any, Any, Any]) -> ApiKey:
        async with runtime_of(request).pool.acquire() as conn:
            return ApiKey(api_key=await _new_key(conn, None))

    @post("/reap", status_code=200, summary="Recover expired leases now")
    async def reap(self, request: Request[Any, Any, Any]) -> Reaped:
        return Reaped(requeued=await reaper.reap(runtime_of(request)))

    @post(
        "/replay",
        status_code=200,
        summary="Replay many dead jobs of a tenant at once",
        dto=Body[Replay],
        return_dto=None,
    )
    async def replay(self, request: Request[Any, Any, Any], data: JSONBody[Replay]) -> Replayed:
        rt = runtime_of(request)
        total = 0
        async with rt.pool.acquire() as conn:
            if data.ids is not None:
                outcomes = await db.job_replay_many(conn, [int(i) for i in data.ids], data.tenant_id)
                total = sum(1 for o in outcomes.values() if o.changed)
            else:
                after = 0
                while total < data.limit:
                    ids = await db.job_dead_ids(conn, data.tenant_id, data.queue, after, min(500, data.limit - total))
                    if not ids:
                        break
                    # One transaction per page keeps locks short on a large dead-letter queue.
                    async with conn.transaction():
                        outcomes = await db.job_replay_many(conn, ids, data.tenant_id)
                    total += sum(1 for o in outcomes.values() if o.changed)
                    after = ids[-1]
        if total:
            rt.metrics.jobs_replayed.add(total, rt.metrics.labels(data.tenant_id, "*"))
        return Replayed(replayed=total)

    # --- listings across tenants, job inspection, deleting a tenant ---------------------------

    @get("/tenants/{tenant_id:str}/keys", summary="A tenant's API keys: ids and dates, never secrets")
    async def list_tenant_keys(self, request: Request[Any, Any, Any], tenant_id: FromPath[str]) -> ApiKeyList:
        tid = _paths.name(tenant_id, "tenant")
        async with runtime_of(request).pool.acquire() as conn:
            if await db.tenant_get(conn, tid) is None:
                raise NotFound(f"no tenant {tid}")
            return ApiKeyList(keys=await db.api_key_list(conn, tid))

    @delete(
        "/tenants/{tenant_id:str}",
        status_code=200,
        summary="Delete a tenant with its keys, jobs, events, schedules, webhooks, consumers and policies",
        responses=_openapi.problems({409: "The tenant has running jobs: wait for them, or delete with force=true."}),
    )
    async def delete_tenant(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], force: FromQuery[bool] = False
    ) -> TenantDeleted:
        return await _delete_tenant(runtime_of(request), _paths.name(tenant_id, "tenant"), force=force)

    @get("/jobs", summary="Jobs of every tenant, newest first, filtered", guards=[_paths.strict_query])
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        tenant: FromQuery[str | None] = None,
        queue: FromQuery[str | None] = None,
        job_state: Annotated[str | None, QueryParameter(name="state")] = None,
        kind: FromQuery[str | None] = None,
        job_id: Annotated[str | None, QueryParameter(name="id")] = None,
        idempotency_key: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AdminJobList:
        if job_state is not None and job_state not in JobState.__members__.values():
            raise InvalidInput(f"state must be one of {', '.join(s.value for s in JobState)}", field="state")
        jid = None
        if job_id is not None:
            jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
            if jid is None:
                raise InvalidInput("id must be a job id", field="id")
        f = db.JobFilter(
            tenant_id=tenant, queue=queue, state=job_state, kind=kind, job_id=jid, idempotency_key=idempotency_key
        )
        before_id = _paths.id_cursor(after, "after")
        async with runtime_of(request).pool.acquire() as conn:
            jobs = await db.job_admin_list(conn, f, before_id=before_id, limit=limit + 1)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return AdminJobList(jobs=jobs, next=jobs[-1].id if more else None)

    @get("/jobs/{job_id:str}", summary="A job of any tenant, with its lease and its events")
    async def get_job(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> JobDetail:
        jid = _paths.job_id(job_id)
        async with runtime_of(request).pool.acquire() as conn:
            job = await db.job_admin_get(conn, jid)
            if job is None:
                raise NotFound("no such job")
            events = await db.job_events(conn, jid, MAX_JOB_EVENTS + 1)
        truncated = len(events) > MAX_JOB_EVENTS
        return JobDetail(job=job, events=events[-MAX_JOB_EVENTS:], events_truncated=truncated)

    @post(
        "/jobs/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a job of any tenant",
        responses=_openapi.problems({409: "The job has finished: it cannot be cancelled."}),
    )
    async def cancel_job(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> AdminJob:
        rt = runtime_of(request)
        jid = _paths.job_id(job_id)
        async with rt.pool.acquire() as conn:
            found = await db.job_admin_get(conn, jid)
            outcome = None if found is None else await db.job_cancel(conn, jid, found.tenant_id)
            if outcome is None:
                raise NotFound("no such job")
            if not outcome.changed and outcome.job.state is not JobState.RUNNING:
                raise Conflict(f"a {outcome.job.state} job cannot be cancelled")
            job = await db.job_admin_get(conn, jid)
        if outcome.changed and outcome.job.state is JobState.CANCELLED:
            rt.metrics.jobs_cancelled.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
        if job is None:  # pruned or deleted since
            raise NotFound("no such job")
        return job

    @post(
        "/jobs/{job_id:str}/retry",
        status_code=200,
        summary="Replay a dead or cancelled job of any tenant",
        responses=_openapi.problems({409: "Only a dead or cancelled job can be replayed."}),
    )
    async def retry_job(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> AdminJob:
        rt = runtime_of(request)
        jid = _paths.job_id(job_id)
        async with rt.pool.acquire() as conn:
            outcome = (await db.job_replay_many(conn, [jid], None)).get(jid)
            if outcome is None:
                raise NotFound("no such job")
            if not outcome.changed:
                raise Conflict(f"a {outcome.job.state} job cannot be replayed: only dead or cancelled ones")
            job = await db.job_admin_get(conn, jid)
        rt.metrics.jobs_replayed.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
        if job is None:
            raise NotFound("no such job")
        return job

    @get("/workers", summary="The workers that hold leases now")
    async def list_workers(self, request: Request[Any, Any, Any], tenant: FromQuery[str | None] = None) -> WorkerList:
        async with runtime_of(request).pool.acquire() as conn:
            return WorkerList(workers=await db.worker_list(conn, tenant))

    @get("/queues", summary="Every tenant's queues that are paused or hold open or dead jobs")
    async def list_queues(self, request: Request[Any, Any, Any], tenant: FromQuery[str | None] = None) -> QueueList:
        async with runtime_of(request).pool.acquire() as conn:
            return QueueList(queues=await db.queue_list(conn, tenant))

    @get("/schedules", summary="Schedules of every tenant", guards=[_paths.strict_query])
    async def list_schedules(
        self,
        request: Request[Any, Any, Any],
        tenant: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AdminScheduleList:
        after_id = _paths.id_cursor(after, "after") or 0
        async with runtime_of(request).pool.acquire() as conn:
            rows = await db.schedule_admin_list(conn, tenant, after_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return AdminScheduleList(schedules=[s for _, s in rows], next=str(rows[-1][0]) if more else None)

    @get("/webhooks", summary="Webhooks of every tenant (never their secrets)", guards=[_paths.strict_query])
    async def list_webhooks(
        self,
        request: Request[Any, Any, Any],
        tenant: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> TenantWebhookList:
        after_id = _paths.id_cursor(after, "after") or 0
        async with runtime_of(request).pool.acquire() as conn:
            rows = await db.webhook_admin_list(conn, tenant, after_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return TenantWebhookList(webhooks=[_tenant_webhook(w) for w in rows], next=str(rows[-1].id) if more else None)


def _tenant_webhook(w: db.WebhookRow) -> TenantWebhook:
    return TenantWebhook(
        id=str(w.id),
        tenant_id=w.tenant_id,
        url=w.url,
        event_types=[EventType(t) for t in w.event_types],
        state="parked" if w.state == "parked" else "active",
        cursor=str(w.cursor),
        attempts=w.attempts,
        next_attempt_at=w.next_attempt_at,
        delivered=w.delivered,
        created_at=w.created_at,
        last_status=w.last_status,
        last_error=w.last_error,
        last_attempt_at=w.last_attempt_at,
        last_delivered_at=w.last_delivered_at,
    )


def _running_refusal(tenant_id: str, running: int) -> Conflict:
    return Conflict(
        f"tenant {tenant_id} has {running} running job{'s' if running != 1 else ''}: "
        f"wait for {'them' if running != 1 else 'it'} to finish, or delete with force=true"
    )


# A lease that advances the tenant's fair-share pass can lock one of its jobs, then wait for
# the tenant row this deletion holds: PostgreSQL breaks the deadlock, and the deletion tries again.
DELETE_ATTEMPTS = 3


async def _delete_tenant(rt: Runtime, tenant_id: str, *, force: bool) -> TenantDeleted:
    async with rt.pool.acquire() as conn:
        tenant = await db.tenant_get(conn, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id}")
        if not force and (running := await db.tenant_running_count(conn, tenant_id)):
            raise _running_refusal(tenant_id, running)
        # Disabled first, in its own commit: its keys are refused and shared workers pass it
        # over, so nothing new starts while its rows go.
        await db.tenant_update(conn, tenant_id, name=None, weight=None, max_inflight=msgspec.UNSET, disabled=True)
        try:
            for attempt in range(DELETE_ATTEMPTS):
                try:
                    async with conn.transaction():
                        if not await db.tenant_lock(conn, tenant_id):
                            raise NotFound(f"no tenant {tenant_id}")
                        gone = await db.tenant_delete(conn, tenant_id)
                        if not force and gone.running_jobs:
                            raise _running_refusal(tenant_id, gone.running_jobs)  # rolls the deletion back
                    break
                except asyncpg.DeadlockDetectedError:
                    if attempt == DELETE_ATTEMPTS - 1:
                        raise
        except Exception:
            if not tenant.disabled:
                await db.tenant_update(
                    conn, tenant_id, name=None, weight=None, max_inflight=msgspec.UNSET, disabled=False
                )
            raise
    return TenantDeleted(
        tenant_id=tenant_id,
        jobs=gone.jobs,
        running_jobs=gone.running_jobs,
        keys=gone.keys,
        schedules=gone.schedules,
        webhooks=gone.webhooks,
        consumers=gone.consumers,
        events=gone.events,
    )
