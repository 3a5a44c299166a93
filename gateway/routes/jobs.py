"""Tenant routes: submit, batch submit, get (with wait), list."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

import db
from core import Conflict, InvalidInput, JobState, NotFound, is_terminal
from core.wire import MAX_WAIT_MS, Job, JobBatch, JobBatchSubmit, JobList, JobSubmit, RetryPolicy, RetryPolicyOut

from ..auth import runtime_of, signed, tenant_of
from . import _openapi, _paths
from ._body import Body


def new_job(s: JobSubmit, field_prefix: str = "") -> db.NewJob:
    if s.run_at is not None and s.delay_ms is not None:
        raise InvalidInput("give run_at or delay_ms, not both", field=f"{field_prefix}delay_ms")
    return db.NewJob(
        queue=s.queue,
        kind=s.kind,
        payload=s.payload,
        priority=s.priority,
        max_attempts=s.max_attempts,
        run_at=s.run_at,
        delay_ms=s.delay_ms,
        idempotency_key=s.idempotency_key,
        timeout_seconds=s.timeout_seconds,
        retry_base_ms=s.retry_base_ms,
        retry_cap_ms=s.retry_cap_ms,
    )


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (jsonb may store 1e2 as 100), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, int | float):
        return isinstance(b, int | float) and a == b
    return type(a) is type(b) and a == b


def _differing_field(s: JobSubmit, job: Job) -> str | None:
    """The first field in which a submit differs from the job its idempotency key names. Left
    out: run_at and delay_ms (relative to the moment of sending, so a resend differs), and an
    omitted max_attempts (the job holds the value the policies gave it)."""
    checks = (
        ("queue", s.queue == job.queue),
        ("kind", s.kind == job.kind),
        ("priority", s.priority == job.priority),
        ("max_attempts", s.max_attempts is None or s.max_attempts == job.max_attempts),
        ("timeout_seconds", s.timeout_seconds == job.timeout_seconds),
        ("retry_base_ms", s.retry_base_ms == job.retry_base_ms),
        ("retry_cap_ms", s.retry_cap_ms == job.retry_cap_ms),
        ("payload", _same_json(s.payload, job.payload)),
    )
    return next((name for name, same in checks if not same), None)


def check_idempotency(submits: list[JobSubmit], inserted: list[db.Inserted], *, batch: bool) -> None:
    """409 naming the idempotency key of the first submit that reuses a key for a different
    request (Stripe's rule); the same request again answers with the job first created."""
    for i, (s, ins) in enumerate(zip(submits, inserted, strict=True)):
        if ins.created:
            continue
        differs = _differing_field(s, ins.job)
        if differs is not None:
            prefix = f"jobs[{i}]." if batch else ""
            raise Conflict(
                f"{prefix}idempotency_key: {s.idempotency_key!r} was used for job {ins.job.id} with another "
                f"{differs}; a different request needs a new key",
                field=f"{prefix}idempotency_key",
            )


class JobsController(Controller):
    path = "/v1/jobs"
    guards = [signed, _paths.strict_query]
    tags = ["jobs"]

    @post(
        "/",
        status_code=201,
        summary="Submit a job",
        dto=Body[JobSubmit],
        return_dto=None,
        responses={
            **_openapi.RESUBMITTED,
            **_openapi.problems({409: "The idempotency key was used for a different request."}),
        },
    )
    async def submit(self, request: Request[Any, Any, Any], data: JSONBody[JobSubmit]) -> Response[Job]:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        job = new_job(data)
        async with rt.pool.acquire() as conn:
            (inserted,) = await db.job_insert_many(
                conn,
                tenant_id,
                [job],
                default_max_attempts=rt.settings.default_max_attempts,
                traceparent=rt.tracing.traceparent(request.headers),
            )
        # Not created: the key existed, so nothing was inserted and refusing is enough.
        check_idempotency([data], [inserted], batch=False)
        if inserted.created:
            rt.metrics.jobs_submitted.add(1, rt.metrics.labels(tenant_id, job.queue))
        return Response(inserted.job, status_code=201 if inserted.created else 200)

    @post(
        "/batch",
        status_code=201,
        summary="Submit up to 1000 jobs, all or nothing",
        responses=_openapi.problems(
            {409: "An item's idempotency key was used for a different request: none is inserted."}
        ),
        dto=Body[JobBatchSubmit],
        return_dto=None,
    )
    async def submit_batch(self, request: Request[Any, Any, Any], data: JSONBody[JobBatchSubmit]) -> JobBatch:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        jobs = [new_job(s, f"jobs[{i}].") for i, s in enumerate(data.jobs)]
        # One statement inserts the whole batch. With idempotency keys, a transaction around it
        # lets a key reused for a different request roll back the items already inserted.
        keyed = any(j.idempotency_key is not None for j in jobs)
        async with rt.pool.acquire() as conn, conn.transaction() if keyed else contextlib.nullcontext():
            inserted = await db.job_insert_many(
                conn,
                tenant_id,
                jobs,
                default_max_attempts=rt.settings.default_max_attempts,
                traceparent=rt.tracing.traceparent(request.headers),
            )
            check_idempotency(data.jobs, inserted, batch=True)
        created = Counter(i.job.queue for i in inserted if i.created)
        for queue, n in created.items():
            rt.metrics.jobs_submitted.add(n, rt.metrics.labels(tenant_id, queue))
        return JobBatch(jobs=[i.job for i in inserted])

    @get("/{job_id:str}", summary="Get a job; with wait_ms, wait for it to finish")
    async def get_job(
        self,
        request: Request[Any, Any, Any],
        job_id: FromPath[str],
        wait_ms: Annotated[int, QueryParameter(ge=0, le=MAX_WAIT_MS)] = 0,
    ) -> Job:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        jid = _paths.job_id(job_id)
        waiters = rt.notifier.job_waiters
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while True:
            ended = waiters.park(jid) if wait_ms else None
            try:
                async with rt.pool.acquire() as conn:
                    job = await db.job_get(conn, jid, tenant_id)
                if job is None:
                    raise NotFound("no such job")
                remaining = deadline - loop.time()
                if ended is None or is_terminal(job.state) or remaining <= 0 or rt.draining.is_set():
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), remaining)
            finally:
                if ended is not None:
                    waiters.leave(jid, ended)

    @get("/", summary="List the tenant's jobs, newest first")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        job_state: Annotated[str | None, QueryParameter(name="state")] = None,
        queue: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        after: FromQuery[str | None] = None,
    ) -> JobList:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        if job_state is not None and job_state not in JobState.__members__.values():
            raise InvalidInput(f"state must be one of {', '.join(s.value for s in JobState)}", field="state")
        before_id = _paths.id_cursor(after, "after")
        async with rt.pool.acquire() as conn:
            jobs = await db.job_list(
                conn, tenant_id, state=job_state, queue=queue, before_id=before_id, limit=limit + 1
            )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobList(jobs=jobs, next=jobs[-1].id if more else None)

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a job (a running one at its next report)",
        responses=_openapi.problems({409: "The job has finished: it cannot be cancelled."}),
    )
    async def cancel(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Job:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        async with rt.pool.acquire() as conn:
            outcome = await db.job_cancel(conn, _paths.job_id(job_id), tenant_id)
        if outcome is None:
            raise NotFound("no such job")
        if not outcome.changed and outcome.job.state is not JobState.RUNNING:
            raise Conflict(f"a {outcome.job.state} job cannot be cancelled")
        if outcome.changed and outcome.job.state is JobState.CANCELLED:
            rt.metrics.jobs_cancelled.add(1, rt.metrics.labels(tenant_id, outcome.job.queue))
        return outcome.job

    @post(
        "/{job_id:str}/retry",
        status_code=200,
        summary="Replay a dead or cancelled job",
        responses=_openapi.problems({409: "Only a dead or cancelled job can be replayed."}),
    )
    async def retry(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Job:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        jid = _paths.job_id(job_id)
        async with rt.pool.acquire() as conn:
            outcome = (await db.job_replay_many(conn, [jid], tenant_id)).get(jid)
        if outcome is None:
            raise NotFound("no such job")
        if not outcome.changed:
            raise Conflict(f"a {outcome.job.state} job cannot be replayed: only dead or cancelled ones")
        rt.metrics.jobs_replayed.add(1, rt.metrics.labels(tenant_id, outcome.job.queue))
        return outcome.job


TENANT_WIDE = ""


def _policy_out(p: db.RetryPolicyRow) -> RetryPolicyOut:
    return RetryPolicyOut(
        queue=p.queue or None, max_attempts=p.max_attempts, retry_base_ms=p.retry_base_ms, retry_cap_ms=p.retry_cap_ms
    )


class RetryPolicyController(Controller):
    """Retry policies: the tenant-wide one at /v1/retry-policy, a queue's at /v1/queues/{queue}/retry-policy."""

    path = "/v1"
    guards = [signed]
    tags = ["retry policies"]

    async def _put(self, request: Request[Any, Any, Any], queue: str, data: RetryPolicy) -> RetryPolicyOut:
        row = db.RetryPolicyRow(
            queue=queue,
            max_attempts=data.max_attempts,
            retry_base_ms=data.retry_base_ms,
            retry_cap_ms=data.retry_cap_ms,
        )
        async with runtime_of(request).pool.acquire() as conn:
            return _policy_out(await db.retry_policy_upsert(conn, tenant_of(request), row))

    async def _get(self, request: Request[Any, Any, Any], queue: str) -> RetryPolicyOut:
        async with runtime_of(request).pool.acquire() as conn:
            row = await db.retry_policy_get(conn, tenant_of(request), queue)
        if row is None:
            return RetryPolicyOut(queue=queue or None)
        return _policy_out(row)

    @put("/retry-policy", summary="Set the tenant-wide retry policy", dto=Body[RetryPolicy], return_dto=None)
    async def put_tenant(self, request: Request[Any, Any, Any], data: JSONBody[RetryPolicy]) -> RetryPolicyOut:
        return await self._put(request, TENANT_WIDE, data)

    @get("/retry-policy", summary="The tenant-wide retry policy")
    async def get_tenant(self, request: Request[Any, Any, Any]) -> RetryPolicyOut:
        return await self._get(request, TENANT_WIDE)

    @put(
        "/queues/{queue:str}/retry-policy", summary="Set a queue's retry policy", dto=Body[RetryPolicy], return_dto=None
    )
    async def put_queue(
        self, request: Request[Any, Any, Any], queue: FromPath[str], data: JSONBody[RetryPolicy]
    ) -> RetryPolicyOut:
        return await self._put(request, _paths.name(queue, "queue"), data)

    @get("/queues/{queue:str}/retry-policy", summary="A queue's retry policy")
    async def get_queue(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> RetryPolicyOut:
        return await self._get(request, _paths.name(queue, "queue"))

    @delete("/queues/{queue:str}/retry-policy", status_code=204, summary="Drop a queue's retry policy")
    async def delete_queue(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> Response[None]:
        async with runtime_of(request).pool.acquire() as conn:
            if not await db.retry_policy_delete(conn, tenant_of(request), _paths.name(queue, "queue")):
                raise NotFound(f"queue {queue} has no retry policy")
        return Response(None, status_code=204)
