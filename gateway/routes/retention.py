"""Retention of finished jobs: the tenant-wide policy at /v1/retention, a queue's at
/v1/queues/{queue}/retention."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, put
from litestar.params import FromPath, JSONBody

import db
from core import JobState, NotFound
from core.wire import Retention, RetentionPolicy, RetentionPolicyOut

from ..auth import runtime_of, signed, tenant_of
from ..services.job_pruner import retention_defaults
from . import _openapi, _paths
from ._body import Body


def _keep(data: RetentionPolicy) -> dict[JobState, int | None]:
    """The states the body names (null included); absent ones inherit."""
    given = {
        JobState.SUCCEEDED: data.succeeded_seconds,
        JobState.CANCELLED: data.cancelled_seconds,
        JobState.DEAD: data.dead_seconds,
    }
    return {s: v for s, v in given.items() if not isinstance(v, msgspec.UnsetType)}


def _out(request: Request[Any, Any, Any], queue: str, policies: db.RetentionPolicies) -> RetentionPolicyOut:
    own = policies.scope
    force = db.retention_in_force(policies, retention_defaults(runtime_of(request).settings))
    return RetentionPolicyOut(
        queue=queue or None,
        succeeded_seconds=own.get(JobState.SUCCEEDED, msgspec.UNSET),
        cancelled_seconds=own.get(JobState.CANCELLED, msgspec.UNSET),
        dead_seconds=own.get(JobState.DEAD, msgspec.UNSET),
        effective=Retention(
            succeeded_seconds=force[JobState.SUCCEEDED],
            cancelled_seconds=force[JobState.CANCELLED],
            dead_seconds=force[JobState.DEAD],
        ),
    )


class RetentionController(Controller):
    path = "/v1"
    guards = [signed]
    tags = ["retention"]

    async def _put(self, request: Request[Any, Any, Any], queue: str, data: RetentionPolicy) -> RetentionPolicyOut:
        tenant_id = tenant_of(request)
        async with runtime_of(request).pool.acquire() as conn:
            async with conn.transaction():
                await db.retention_policy_put(conn, tenant_id, queue, _keep(data))
            policies = await db.retention_policy_get(conn, tenant_id, queue)
        return _out(request, queue, policies)

    async def _get(self, request: Request[Any, Any, Any], queue: str) -> RetentionPolicyOut:
        async with runtime_of(request).pool.acquire() as conn:
            policies = await db.retention_policy_get(conn, tenant_of(request), queue)
        return _out(request, queue, policies)

    async def _delete(self, request: Request[Any, Any, Any], queue: str) -> Response[None]:
        async with runtime_of(request).pool.acquire() as conn:
            if not await db.retention_policy_delete(conn, tenant_of(request), queue):
                raise NotFound(f"queue {queue} has no retention policy" if queue else "no tenant-wide retention policy")
        return Response(None, status_code=204)

    @put(
        "/retention",
        summary="Set the tenant-wide retention of finished jobs",
        dto=Body[RetentionPolicy],
        return_dto=None,
    )
    async def put_tenant(self, request: Request[Any, Any, Any], data: JSONBody[RetentionPolicy]) -> RetentionPolicyOut:
        return await self._put(request, db.TENANT_WIDE, data)

    @get("/retention", summary="The tenant-wide retention of finished jobs, and the retention in force")
    async def get_tenant(self, request: Request[Any, Any, Any]) -> RetentionPolicyOut:
        return await self._get(request, db.TENANT_WIDE)

    @delete(
        "/retention",
        status_code=204,
        summary="Drop the tenant-wide retention policy",
        responses=_openapi.problems({404: "There is no tenant-wide retention policy."}),
    )
    async def delete_tenant(self, request: Request[Any, Any, Any]) -> Response[None]:
        return await self._delete(request, db.TENANT_WIDE)

    @put(
        "/queues/{queue:str}/retention",
        summary="Set a queue's retention of finished jobs",
        dto=Body[RetentionPolicy],
        return_dto=None,
    )
    async def put_queue(
        self, request: Request[Any, Any, Any], queue: FromPath[str], data: JSONBody[RetentionPolicy]
    ) -> RetentionPolicyOut:
        return await self._put(request, _paths.name(queue, "queue"), data)

    @get("/queues/{queue:str}/retention", summary="A queue's retention of finished jobs, and the retention in force")
    async def get_queue(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> RetentionPolicyOut:
        return await self._get(request, _paths.name(queue, "queue"))

    @delete("/queues/{queue:str}/retention", status_code=204, summary="Drop a queue's retention policy")
    async def delete_queue(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> Response[None]:
        return await self._delete(request, _paths.name(queue, "queue"))
