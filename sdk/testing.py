"""Test handlers without a server: run one the way a `WorkerRunner` does and look at the outcome.

    from sdk.testing import FakeJob, run_handler

    def test_resize() -> None:
        outcome = run_handler(resize, {"width": 10})
        assert outcome.status == "completed"
        assert outcome.result == {"width": 10, "height": 10}

The handler is dispatched by kind and its exceptions mapped to outcomes by the same code the
runner uses: `Retry` → "retried", `Snooze` → "snoozed", `Cancel` → "cancelled", any other
exception → "failed" with its traceback in `error`, a result that is not JSON → "failed".
Inside the handler `sdk.current_job()` returns the fake job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from core.states import JobState
from core.wire import Job, LeasedJob

from ._dispatch import resolve
from ._outcome import Handler, Outcome, run_job

__all__ = ["FakeJob", "Outcome", "arun_handler", "run_handler"]


def FakeJob(
    payload: dict[str, Any] | None = None,
    *,
    kind: str = "",
    attempt: int = 1,
    max_attempts: int = 5,
    queue: str = "default",
    tenant_id: str = "test-tenant",
    id: str = "1",
    priority: int = 0,
    lease_token: int = 1,
    now: datetime | None = None,
) -> LeasedJob:
    """A leased job as a worker would receive it, `attempt` being the attempt it runs as."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    at = now or datetime.now(UTC)
    return LeasedJob(
        id=id,
        tenant_id=tenant_id,
        queue=queue,
        kind=kind,
        payload=payload if payload is not None else {},
        priority=priority,
        state=JobState.RUNNING,
        attempts=attempt,
        max_attempts=max_attempts,
        run_at=at,
        created_at=at,
        started_at=at,
        lease_token=lease_token,
        lease_expires_at=at,
    )


def _job(payload: dict[str, Any] | Job, kind: str, attempt: int) -> Job:
    return payload if isinstance(payload, Job) else FakeJob(payload, kind=kind, attempt=attempt)


async def arun_handler(
    handler: Handler | Mapping[str, Handler],
    payload: dict[str, Any] | Job,
    *,
    attempt: int = 1,
    kind: str = "",
) -> Outcome:
    """Run `handler` on a payload or a job and return the outcome. `handler` may be a mapping of
    kind → handler, dispatched as the runner does: the job's kind, else the `""` entry. For
    async tests; `run_handler` is the blocking form."""
    job = _job(payload, kind, attempt)
    chosen = resolve(job.kind, handler) if isinstance(handler, Mapping) else handler
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-test-handler") as pool:
        return await run_job(chosen, job, pool)


def run_handler(
    handler: Handler | Mapping[str, Handler],
    payload: dict[str, Any] | Job,
    *,
    attempt: int = 1,
    kind: str = "",
) -> Outcome:
    """`arun_handler` for code without a running event loop (plain pytest tests, scripts)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_handler(handler, payload, attempt=attempt, kind=kind))
    raise RuntimeError("run_handler() blocks; inside an event loop use `await arun_handler(...)`")
