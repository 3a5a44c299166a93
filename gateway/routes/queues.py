"""Pausing and resuming a tenant's queue: leases skip a paused queue; its jobs wait, and resume."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath

import db
from core import NotFound
from core.wire import PausedQueues, QueueState

from ..auth import operator, runtime_of, signed, tenant_of
from . import _paths


async def _set(request: Request[Any, Any, Any], tenant_id: str, queue: str, paused: bool) -> QueueState:
    async with runtime_of(request).pool.acquire() as conn:
        if await db.tenant_get(conn, tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id}")
        if paused:
            await db.queue_pause(conn, tenant_id, _paths.name(queue, "queue"))
        else:
            await db.queue_resume(conn, tenant_id, _paths.name(queue, "queue"))
    return QueueState(tenant_id=tenant_id, queue=queue, paused=paused)


class QueuesController(Controller):
    path = "/v1/queues"
    guards = [signed]
    tags = ["queues"]

    @get("/paused", summary="The tenant's paused queues")
    async def paused(self, request: Request[Any, Any, Any]) -> PausedQueues:
        async with runtime_of(request).pool.acquire() as conn:
            return PausedQueues(queues=await db.queue_paused_list(conn, tenant_of(request)))

    @post("/{queue:str}/pause", status_code=200, summary="Pause a queue: leases skip it until resumed")
    async def pause(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> QueueState:
        return await _set(request, tenant_of(request), queue, True)

    @post("/{queue:str}/resume", status_code=200, summary="Resume a paused queue")
    async def resume(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> QueueState:
        return await _set(request, tenant_of(request), queue, False)


class AdminQueuesController(Controller):
    path = "/v1/admin/tenants/{tenant_id:str}/queues"
    guards = [operator]
    tags = ["operator"]

    @post("/{queue:str}/pause", status_code=200, summary="Pause a tenant's queue")
    async def pause(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], queue: FromPath[str]
    ) -> QueueState:
        return await _set(request, tenant_id, queue, True)

    @post("/{queue:str}/resume", status_code=200, summary="Resume a tenant's queue")
    async def resume(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], queue: FromPath[str]
    ) -> QueueState:
        return await _set(request, tenant_id, queue, False)
