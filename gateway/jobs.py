"""Tenant routes: submit, batch submit, get (with wait), list."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

import db
from core import InvalidInput, JobState, NotFound, Settings, is_terminal
from core.wire import Job, JobBatch, JobBatchSubmit, JobList, JobSubmit

from .auth import runtime_of, signed, tenant_of

MAX_WAIT_MS = 60_000


def new_job(s: JobSubmit, settings: Settings, field_prefix: str = "") -> db.NewJob:
    if s.run_at is not None and s.delay_ms is not None:
        raise InvalidInput("give run_at or delay_ms, not both", field=f"{field_prefix}delay_ms")
    return db.NewJob(
        queue=s.queue,
        kind=s.kind,
        payload=s.payload,
        priority=s.priority,
        max_attempts=s.max_attempts or settings.default_max_attempts,
        run_at=s.run_at,
        delay_ms=s.delay_ms,
        idempotency_key=s.idempotency_key,
        timeout_seconds=s.timeout_seconds,
    )


def parse_job_id(job_id: str) -> int:
    """Job ids are decimal strings; anything else names no job (404, as for another tenant's)."""
    if not job_id.isdigit() or len(job_id) > 19 or int(job_id) > db.jobs.MAX_JOB_ID:
        raise NotFound("no such job")
    return int(job_id)


class JobsController(Controller):
    path = "/v1/jobs"
    guards = [signed]
    tags = ["jobs"]

    @post("/", status_code=201, summary="Submit a job")
    async def submit(self, request: Request[Any, Any, Any], data: JSONBody[JobSubmit]) -> Response[Job]:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        job = new_job(data, rt.settings)
        async with rt.pool.acquire() as conn:
            (inserted,) = await db.job_insert_many(conn, tenant_id, [job])
        if inserted.created:
            rt.metrics.jobs_submitted.add(1, {"tenant": tenant_id, "queue": job.queue})
        return Response(inserted.job, status_code=201 if inserted.created else 200)

    @post("/batch", status_code=201, summary="Submit up to 1000 jobs, all or nothing")
    async def submit_batch(self, request: Request[Any, Any, Any], data: JSONBody[JobBatchSubmit]) -> JobBatch:
        rt = runtime_of(request)
        tenant_id = tenant_of(request)
        jobs = [new_job(s, rt.settings, f"jobs[{i}].") for i, s in enumerate(data.jobs)]
        async with rt.pool.acquire() as conn, conn.transaction():
            inserted = await db.job_insert_many(conn, tenant_id, jobs)
        created = sum(1 for i in inserted if i.created)
        if created:
            rt.metrics.jobs_submitted.add(created, {"tenant": tenant_id, "queue": jobs[0].queue})
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
        jid = parse_job_id(job_id)
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
                if ended is None or is_terminal(job.state) or remaining <= 0:
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
        before_id = None
        if after is not None:
            if not after.isdigit() or len(after) > 19:
                raise InvalidInput("after must be a cursor returned as next", field="after")
            before_id = int(after)
        async with rt.pool.acquire() as conn:
            jobs = await db.job_list(
                conn, tenant_id, state=job_state, queue=queue, before_id=before_id, limit=limit + 1
            )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobList(jobs=jobs, next=jobs[-1].id if more else None)
