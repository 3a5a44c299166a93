"""Operator routes under /v1/admin (bearer admin token)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody

import db
from core import Conflict, NotFound, signing
from core.wire import ApiKey, Reaped, Replay, Replayed, Tenant, TenantCreate, TenantCreated, TenantList, TenantPatch

from ..auth import operator, runtime_of
from ..services import reaper
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
