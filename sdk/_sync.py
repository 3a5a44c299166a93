"""A blocking ProducerClient for scripts: the async client runs on an event loop in a thread."""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from core.wire import Job, JobList, JobSubmit

from ._http import DEFAULT_TIMEOUT_S
from ._producer import ProducerClient

T = TypeVar("T")


class SyncProducerClient:
    """`ProducerClient` with blocking methods, for scripts and code without an event loop.

    One background thread runs an event loop and the pooled connections; calls from any thread
    are sent to it and wait for their answer. Close it (or use `with`) to stop the thread.
    """

    def __init__(self, url: str, *, api_key: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = ProducerClient(url, api_key=api_key, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orchestrator-producer", daemon=True)
        self._thread.start()
        self._closed = False

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking call from the client's own loop would never return")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(
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
        """Submit one job; see `ProducerClient.submit`."""
        return self._call(
            self._client.submit(
                payload,
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
        )

    def submit_many(self, jobs: Sequence[JobSubmit]) -> builtins.list[Job]:
        """Submit up to 1000 jobs in one transaction, all or nothing."""
        return self._call(self._client.submit_many(jobs))

    def get(self, job_id: str, wait_ms: int = 0) -> Job:
        return self._call(self._client.get(job_id, wait_ms))

    def wait(self, job_id: str, timeout_s: float = 60) -> Job:
        """Block until the job is terminal, or `timeout_s` passed; returns it."""
        return self._call(self._client.wait(job_id, timeout_s))

    def cancel(self, job_id: str) -> Job:
        return self._call(self._client.cancel(job_id))

    def retry(self, job_id: str) -> Job:
        return self._call(self._client.retry(job_id))

    def list(
        self, state: str | None = None, queue: str | None = None, limit: int = 100, after: str | None = None
    ) -> JobList:
        return self._call(self._client.list(state, queue, limit, after))

    def close(self) -> None:
        """Close the connections and stop the thread. Safe to call twice."""
        if self._closed:
            return
        try:
            self._call(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
