"""The worker side of the API: lease, heartbeat, complete, fail, ack."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from core.wire import (
    Ack,
    AckComplete,
    AckFail,
    AckResponse,
    Complete,
    Fail,
    Heartbeat,
    HeartbeatResponse,
    Job,
    LeasedJob,
    LeaseRequest,
    LeaseResponse,
)

from ._http import DEFAULT_TIMEOUT_S, Transport, body_of, job_path

_job = msgspec.json.Decoder(Job)
_lease = msgspec.json.Decoder(LeaseResponse)
_heartbeat = msgspec.json.Decoder(HeartbeatResponse)
_ack = msgspec.json.Decoder(AckResponse)

# Room past the server's wait for the answer to travel back before the client gives up.
LEASE_TIMEOUT_MARGIN_S = 15.0


class WorkerClient:
    """A worker's connection to the gateway.

    `api_key` is a tenant key (a worker pinned to that tenant) or a shared worker key (jobs of
    every tenant). `tenant_id` is informational, for logs; the key decides what is leased.
    """

    def __init__(
        self,
        url: str,
        *,
        worker_id: str,
        tenant_id: str | None = None,
        api_key: str,
        queues: Sequence[str] = ("default",),
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.worker_id = worker_id
        self.tenant_id = tenant_id
        self.queues: tuple[str, ...] = tuple(queues)
        self._http = Transport(url, api_key, timeout=timeout)

    async def lease(
        self,
        max_jobs: int = 1,
        wait_ms: int = 30_000,
        lease_seconds: int = 30,
        queues: Sequence[str] | None = None,
    ) -> list[LeasedJob]:
        """Lease up to `max_jobs`, waiting up to `wait_ms` for the first; [] when none came."""
        req = LeaseRequest(
            worker_id=self.worker_id,
            queues=list(queues or self.queues),
            max_jobs=max_jobs,
            wait_ms=wait_ms,
            lease_seconds=lease_seconds,
        )
        resp = await self._http.request(
            "POST", "/v1/workers/lease", _lease, body=body_of(req), timeout=wait_ms / 1000 + LEASE_TIMEOUT_MARGIN_S
        )
        return resp.jobs

    async def heartbeat(self, job_id: str, lease_token: int, extend_seconds: int | None = None) -> HeartbeatResponse:
        """Extend the lease; the answer says whether the job's cancellation was requested."""
        body = body_of(Heartbeat(lease_token=lease_token, extend_seconds=extend_seconds))
        return await self._http.request("POST", job_path(job_id, "heartbeat"), _heartbeat, body=body)

    async def complete(self, job_id: str, lease_token: int, result: Any = None) -> Job:
        body = body_of(Complete(lease_token=lease_token, result=result))
        return await self._http.request("POST", job_path(job_id, "complete"), _job, body=body)

    async def fail(
        self,
        job_id: str,
        lease_token: int,
        error: str,
        retryable: bool = True,
        retry_in_ms: int | None = None,
        *,
        snooze: bool = False,
    ) -> Job:
        """Fail this attempt: the job is scheduled for a retry, or `dead` when not retryable or out
        of attempts. With `snooze`, it is scheduled after `retry_in_ms` and the attempt does not count."""
        body = body_of(
            Fail(lease_token=lease_token, error=error, retryable=retryable, retry_in_ms=retry_in_ms, snooze=snooze)
        )
        return await self._http.request("POST", job_path(job_id, "fail"), _job, body=body)

    async def ack(self, complete: Sequence[AckComplete] = (), fail: Sequence[AckFail] = ()) -> AckResponse:
        """Complete and fail many jobs in one round trip; each result is judged on its own."""
        body = body_of(Ack(complete=list(complete), fail=list(fail)))
        return await self._http.request("POST", "/v1/workers/ack", _ack, body=body)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
