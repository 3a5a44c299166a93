"""Worker routes: lease (long-poll), heartbeat, complete, fail, and batched acknowledgement."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NoReturn

from litestar import Controller, Request, post
from litestar.params import FromPath, JSONBody

import db
from core import JobState, NotFound, StaleLease
from core.wire import (
    Ack,
    AckComplete,
    AckFail,
    AckResponse,
    AckResult,
    Complete,
    Fail,
    Heartbeat,
    HeartbeatResponse,
    Job,
    LeaseRequest,
    LeaseResponse,
)

from ..auth import principal_of, runtime_of, signed
from ..leasing import cancel, watch_disconnect
from ..runtime import Runtime
from ..telemetry import logs
from . import _openapi, _paths
from ._body import Body

log = logging.getLogger("orchestrator.workers")

DEFAULT_EXTEND_SECONDS = 30
# After a fail, the same token may repeat the fail while the job has not been leased again.
_AFTER_FAIL = frozenset({JobState.SCHEDULED, JobState.READY, JobState.DEAD, JobState.CANCELLED})


def _judge(outcome: db.Outcome | None, token: int, repeat_states: frozenset[JobState]) -> int:
    """200 when changed now, or when this token already did the same; 404 unseen; 409 stale."""
    if outcome is None:
        return 404
    if outcome.changed:
        return 200
    if outcome.lease_token == token and outcome.job.state in repeat_states:
        return 200
    return 409


def _count(rt: Runtime, outcomes: dict[int, db.Outcome]) -> None:
    for o in outcomes.values():
        if o.changed:
            rt.metrics.finished(o.job)


def _atomic(conn: db.Conn, needed: bool) -> contextlib.AbstractAsyncContextManager[object]:
    """A transaction around several statements; one statement is atomic on its own."""
    return conn.transaction() if needed else contextlib.nullcontext()


def _refuse(rt: Runtime, job_id: int, exists: bool) -> NoReturn:
    if not exists:
        raise NotFound("no such job")
    rt.metrics.fencing_rejections.add(1)
    log.info("stale lease token refused", extra={"job_id": job_id})
    raise StaleLease("the lease token is not this job's current one, or its state does not allow this")


def _fail_item(
    job_id: int, token: int, error: str, retryable: bool, retry_in_ms: int | None, snooze: bool = False
) -> db.FailItem:
    return db.FailItem(
        job_id=job_id, lease_token=token, error=error, retryable=retryable, retry_in_ms=retry_in_ms, snooze=snooze
    )


class WorkersController(Controller):
    path = "/v1"
    guards = [signed]
    tags = ["workers"]

    @post(
        "/workers/lease",
        status_code=200,
        summary="Lease jobs, waiting up to wait_ms for one",
        dto=Body[LeaseRequest],
        return_dto=None,
    )
    async def lease(self, request: Request[Any, Any, Any], data: JSONBody[LeaseRequest]) -> LeaseResponse:
        logs.worker_id.set(data.worker_id)
        tenant_id = principal_of(request).tenant_id
        # Outcomes first: they may free room under the tenant's in-flight cap for this lease.
        results = (
            await _acknowledge(runtime_of(request), tenant_id, data.complete, data.fail)
            if data.complete or data.fail
            else []
        )
        disconnected = watch_disconnect(request.receive) if data.wait_ms else None
        leaser = request.app.state.leaser
        try:
            jobs = await leaser.lease(tenant_id, data, disconnected)
            if jobs and disconnected is not None and disconnected.done():
                # Leased as the client went away: nobody will run these, so they go back now
                # rather than when their lease expires.
                await leaser.release(jobs)
                jobs = []
        finally:
            cancel(disconnected)
        return LeaseResponse(jobs=jobs, results=results)

    @post(
        "/jobs/{job_id:str}/heartbeat",
        status_code=200,
        summary="Extend a lease",
        dto=Body[Heartbeat],
        return_dto=None,
        responses=_openapi.STALE_LEASE,
    )
    async def heartbeat(
        self, request: Request[Any, Any, Any], job_id: FromPath[str], data: JSONBody[Heartbeat]
    ) -> HeartbeatResponse:
        rt = runtime_of(request)
        tenant_id = principal_of(request).tenant_id
        jid = _paths.job_id(job_id)
        extend = min(data.extend_seconds or DEFAULT_EXTEND_SECONDS, rt.settings.max_lease_seconds)
        async with rt.pool.acquire() as conn:
            beat = await db.job_heartbeat(conn, jid, data.lease_token, extend, tenant_id)
            if beat is None:
                _refuse(rt, jid, await db.job_get(conn, jid, tenant_id) is not None)
        return HeartbeatResponse(lease_expires_at=beat[0], cancel_requested=beat[1])

    @post(
        "/jobs/{job_id:str}/complete",
        status_code=200,
        summary="Complete a leased job",
        responses=_openapi.STALE_LEASE,
        dto=Body[Complete],
        return_dto=None,
    )
    async def complete(self, request: Request[Any, Any, Any], job_id: FromPath[str], data: JSONBody[Complete]) -> Job:
        rt = runtime_of(request)
        jid = _paths.job_id(job_id)
        async with rt.pool.acquire() as conn:
            outcomes = await db.job_complete_many(
                conn, [(jid, data.lease_token, data.result)], principal_of(request).tenant_id
            )
        _count(rt, outcomes)
        outcome = outcomes.get(jid)
        if outcome is None or _judge(outcome, data.lease_token, frozenset({JobState.SUCCEEDED})) != 200:
            _refuse(rt, jid, outcome is not None)
        return outcome.job

    @post(
        "/jobs/{job_id:str}/fail",
        status_code=200,
        summary="Fail a leased job: retry later, or dead",
        responses=_openapi.STALE_LEASE,
        dto=Body[Fail],
        return_dto=None,
    )
    async def fail(self, request: Request[Any, Any, Any], job_id: FromPath[str], data: JSONBody[Fail]) -> Job:
        rt = runtime_of(request)
        jid = _paths.job_id(job_id)
        item = _fail_item(jid, data.lease_token, data.error, data.retryable, data.retry_in_ms, data.snooze)
        async with rt.pool.acquire() as conn:
            outcomes = await db.job_fail_many(
                conn,
                [item],
                principal_of(request).tenant_id,
                base_ms=rt.settings.retry_base_ms,
                cap_ms=rt.settings.retry_cap_ms,
            )
        _count(rt, outcomes)
        outcome = outcomes.get(jid)
        if outcome is None or _judge(outcome, data.lease_token, _AFTER_FAIL) != 200:
            _refuse(rt, jid, outcome is not None)
        return outcome.job

    @post(
        "/workers/ack",
        status_code=200,
        summary="Complete and fail many jobs in one round trip",
        dto=Body[Ack],
        return_dto=None,
    )
    async def ack(self, request: Request[Any, Any, Any], data: JSONBody[Ack]) -> AckResponse:
        rt = runtime_of(request)
        return AckResponse(results=await _acknowledge(rt, principal_of(request).tenant_id, data.complete, data.fail))


async def _acknowledge(
    rt: Runtime, tenant_id: str | None, complete: list[AckComplete], fail: list[AckFail]
) -> list[AckResult]:
    """Complete and fail many jobs in one round trip, each judged on its own."""
    completes = [(int(c.id), c.lease_token, c.result) for c in complete]
    fails = [_fail_item(int(f.id), f.lease_token, f.error, f.retryable, f.retry_in_ms, f.snooze) for f in fail]
    async with rt.pool.acquire() as conn, _atomic(conn, bool(completes and fails)):
        done = await db.job_complete_many(conn, completes, tenant_id) if completes else {}
        failed = (
            await db.job_fail_many(
                conn, fails, tenant_id, base_ms=rt.settings.retry_base_ms, cap_ms=rt.settings.retry_cap_ms
            )
            if fails
            else {}
        )
    _count(rt, done)
    _count(rt, failed)
    results: list[AckResult] = []
    for jid, token, _ in completes:
        results.append(_ack_result(rt, jid, done.get(jid), token, frozenset({JobState.SUCCEEDED})))
    for f in fails:
        results.append(_ack_result(rt, f.job_id, failed.get(f.job_id), f.lease_token, _AFTER_FAIL))
    return results


def _ack_result(
    rt: Runtime, jid: int, outcome: db.Outcome | None, token: int, repeat: frozenset[JobState]
) -> AckResult:
    status = _judge(outcome, token, repeat)
    if status == 409:
        rt.metrics.fencing_rejections.add(1)
    return AckResult(id=str(jid), status=status, state=None if outcome is None else outcome.job.state)  # type: ignore[arg-type]
