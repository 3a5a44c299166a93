"""The tenant side of the API: submit jobs, read them, wait for them."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import msgspec

from core.states import is_terminal
from core.wire import MAX_WAIT_MS, Job, JobBatch, JobBatchSubmit, JobList, JobSubmit

from ._backoff import retry_delay_s
from ._errors import SdkError, WaitTimeout, is_transient
from ._http import DEFAULT_TIMEOUT_S, Transport, body_of, job_path
from ._resources import Consumers, Queues, RetryPolicies, Schedules, Webhooks

_job = msgspec.json.Decoder(Job)
_batch = msgspec.json.Decoder(JobBatch)
_list = msgspec.json.Decoder(JobList)


class ProducerClient:
    """Submits and reads the jobs of the tenant that owns `api_key`. A call made inside an active
    OpenTelemetry span carries its trace context, so the jobs it submits continue that trace
    through the gateway into their workers' handler spans.

    The tenant's other resources are namespaces over the same connections: `schedules`,
    `retry_policies`, `queues`, `consumers` and `webhooks`."""

    def __init__(self, url: str, *, api_key: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._http = Transport(url, api_key, timeout=timeout)
        self.schedules = Schedules(self._http)
        self.retry_policies = RetryPolicies(self._http)
        self.queues = Queues(self._http)
        self.consumers = Consumers(self._http)
        self.webhooks = Webhooks(self._http)

    async def submit(
        self,
        payload: dict[str, Any],
        *,
        queue: str = "default",
        kind: str = "",
        priority: int = 0,
        run_at: datetime | None = None,
        delay_ms: int | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        timeout_seconds: int | None = None,
        retry_base_ms: int | None = None,
        retry_cap_ms: int | None = None,
    ) -> Job:
        """Submit one job. With an `idempotency_key` already used by the same request, the job
        first created is returned and nothing new is created, which makes a submit safe to
        retry; used by a different request, it raises Conflict (`field == "idempotency_key"`)."""
        job = JobSubmit(
            payload=payload,
            queue=queue,
            kind=kind,
            priority=priority,
            run_at=run_at,
            delay_ms=delay_ms,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            timeout_seconds=timeout_seconds,
            retry_base_ms=retry_base_ms,
            retry_cap_ms=retry_cap_ms,
        )
        return await self.submit_job(job)

    async def submit_job(self, job: JobSubmit) -> Job:
        """Submit one job given as a `JobSubmit`; see `submit`."""
        return await self._http.request("POST", "/v1/jobs", _job, body=body_of(job))

    async def submit_many(self, jobs: Sequence[JobSubmit]) -> builtins.list[Job]:
        """Submit up to 1000 jobs in one transaction, all or nothing; answers in the same order.
        An idempotency key reused by a different request anywhere in the batch fails all of it
        with Conflict (`field == "jobs[i].idempotency_key"`)."""
        body = body_of(JobBatchSubmit(jobs=builtins.list(jobs)))
        return (await self._http.request("POST", "/v1/jobs/batch", _batch, body=body)).jobs

    async def get(self, job_id: str, wait_ms: int = 0) -> Job:
        """The job; with `wait_ms`, answered as soon as it is terminal or after `wait_ms`."""
        query = {"wait_ms": wait_ms} if wait_ms else None
        return await self._http.request(
            "GET", job_path(job_id), _job, query=query, timeout=wait_ms / 1000 + self._http.timeout
        )

    async def cancel(self, job_id: str) -> Job:
        """Cancel a scheduled or ready job at once; a running one is marked and ends cancelled
        when its worker gives up. Raises Conflict for a job that already ended."""
        return await self._http.request("POST", job_path(job_id) + "/cancel", _job)

    async def retry(self, job_id: str) -> Job:
        """Replay a dead or cancelled job from its first attempt."""
        return await self._http.request("POST", job_path(job_id) + "/retry", _job)

    async def wait(self, job_id: str, timeout_s: float = 60) -> Job:
        """Wait until the job is terminal (`succeeded`, `dead`, `cancelled`) and return it.
        Raises WaitTimeout, holding the job as last seen, when it has not ended after
        `timeout_s`. Transient errors are retried until then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failures = 0
        job: Job | None = None
        while True:
            wait_ms = int(max(0.0, min(deadline - loop.time(), MAX_WAIT_MS / 1000)) * 1000)
            try:
                job = await self.get(job_id, wait_ms=wait_ms)
            except SdkError as exc:
                left = deadline - loop.time()
                if not is_transient(exc):
                    raise
                if left <= 0:
                    if job is None:
                        raise
                    raise WaitTimeout(job, timeout_s) from exc
                failures += 1
                await asyncio.sleep(min(retry_delay_s(failures, exc), left))
                continue
            failures = 0
            if is_terminal(job.state):
                return job
            if loop.time() >= deadline:
                raise WaitTimeout(job, timeout_s)

    async def list(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, after: str | None = None
    ) -> JobList:
        """One page of the tenant's jobs, newest first; pass `next` back as `after` for the next."""
        query = {"state": state, "queue": queue, "limit": limit, "after": after}
        return await self._http.request("GET", "/v1/jobs", _list, query=query)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
