"""The worker side of the API: lease, heartbeat, complete, fail, ack."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from core.signing import split_api_key
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

# Key ids say what a key is (docs/protocol.md): `tk_…` a tenant's, `wk_…` a shared worker key.
SHARED_KEY_PREFIX = "wk_"

_job = msgspec.json.Decoder(Job)
_lease = msgspec.json.Decoder(LeaseResponse)
_heartbeat = msgspec.json.Decoder(HeartbeatResponse)
_ack = msgspec.json.Decoder(AckResponse)

# Room past the server's wait for the answer to travel back before the client gives up.
LEASE_TIMEOUT_MARGIN_S = 15.0


class WorkerClient:
    """A worker's connection to the gateway.

    `api_key` is a tenant key (a worker pinned to that tenant) or a shared worker key (jobs of
    every tenant). The key alone decides what is leased: `tenant_id` names the tenant of a
    tenant key and is refused with a shared worker key (`wk_…`), which would lease other
    tenants' jobs whatever it said. To serve one tenant only, use a key of that tenant. Should a
    lease bring a job of another tenant than `tenant_id` (a key of the wrong tenant), the jobs
    are handed back at once, uncounted, and `lease` raises ValueError.
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
        if tenant_id is not None and split_api_key(api_key)[0].startswith(SHARED_KEY_PREFIX):
            raise ValueError(
                "tenant_id cannot restrict a shared worker key: it leases the jobs of every tenant; "
                "use an API key of that tenant to serve it alone"
            )
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
        resp = await self.lease_and_ack(max_jobs=max_jobs, wait_ms=wait_ms, lease_seconds=lease_seconds, queues=queues)
        return resp.jobs

    async def lease_and_ack(
        self,
        max_jobs: int = 1,
        wait_ms: int = 30_000,
        lease_seconds: int = 30,
        queues: Sequence[str] | None = None,
        *,
        complete: Sequence[AckComplete] = (),
        fail: Sequence[AckFail] = (),
    ) -> LeaseResponse:
        """Acknowledge outcomes of earlier jobs (as `ack` does, each judged on its own: see
        `results`), then lease: one request where a busy worker would make two."""
        req = LeaseRequest(
            worker_id=self.worker_id,
            queues=list(queues or self.queues),
            max_jobs=max_jobs,
            wait_ms=wait_ms,
            lease_seconds=lease_seconds,
            complete=list(complete),
            fail=list(fail),
        )
        resp = await self._http.request(
            "POST", "/v1/workers/lease", _lease, body=body_of(req), timeout=wait_ms / 1000 + LEASE_TIMEOUT_MARGIN_S
        )
        if self.tenant_id is not None and any(j.tenant_id != self.tenant_id for j in resp.jobs):
            await self._hand_back(resp.jobs)
            raise ValueError(f"this worker is for tenant {self.tenant_id!r}, but its key leases another tenant's jobs")
        return resp

    async def _hand_back(self, jobs: Sequence[LeasedJob]) -> None:
        # A snooze of 0 ms: ready again at once, the attempt not counted.
        error = f"handed back by worker {self.worker_id}: configured for tenant {self.tenant_id!r}"
        await self.ack(
            fail=[AckFail(id=j.id, lease_token=j.lease_token, error=error, retry_in_ms=0, snooze=True) for j in jobs]
        )

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
