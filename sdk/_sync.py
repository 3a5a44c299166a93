"""A blocking ProducerClient for scripts: the async client runs on an event loop in a thread."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import msgspec

from core.wire import (
    Consumer,
    EventPage,
    Job,
    JobList,
    JobSubmit,
    QueueState,
    RetryPolicyOut,
    Schedule,
    Webhook,
)

from ._http import DEFAULT_TIMEOUT_S
from ._producer import ProducerClient
from ._resources import Consumers, Queues, RetryPolicies, Schedules, Webhooks

T = TypeVar("T")


class SyncProducerClient:
    """`ProducerClient` with blocking methods, for scripts and code without an event loop.

    One background thread runs an event loop and the pooled connections; calls from any thread
    are sent to it and wait for their answer. Close it (or use `with`) to stop the thread.
    The namespaces `schedules`, `retry_policies`, `queues`, `consumers` and `webhooks` are the
    async client's, blocking.
    """

    def __init__(self, url: str, *, api_key: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = ProducerClient(url, api_key=api_key, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orchestrator-producer", daemon=True)
        self._thread.start()
        self._closed = False
        c = self._client
        self.schedules = SyncSchedules(c.schedules, self._call)
        self.retry_policies = SyncRetryPolicies(c.retry_policies, self._call)
        self.queues = SyncQueues(c.queues, self._call)
        self.consumers = SyncConsumers(c.consumers, self._call)
        self.webhooks = SyncWebhooks(c.webhooks, self._call)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking call from the client's own loop would never return")
        # The caller's context (its active trace span, say) goes with the call to the loop thread.
        context = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def settle(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                done.cancel()
            elif (exc := task.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(task.result())

        def start() -> None:
            self._loop.create_task(coro, context=context).add_done_callback(settle)

        self._loop.call_soon_threadsafe(start)
        return done.result()

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

    def submit_job(self, job: JobSubmit) -> Job:
        """Submit one job given as a `JobSubmit`."""
        return self._call(self._client.submit_job(job))

    def submit_many(self, jobs: Sequence[JobSubmit]) -> builtins.list[Job]:
        """Submit up to 1000 jobs in one transaction, all or nothing."""
        return self._call(self._client.submit_many(jobs))

    def get(self, job_id: str, wait_ms: int = 0) -> Job:
        return self._call(self._client.get(job_id, wait_ms))

    def wait(self, job_id: str, timeout_s: float = 60) -> Job:
        """Block until the job is terminal and return it; WaitTimeout (with the job as last
        seen) when it has not ended after `timeout_s`."""
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


class _Namespace:
    def __init__(self, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._call = call

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        result: T = self._call(coro)
        return result


class SyncSchedules(_Namespace):
    """`ProducerClient.schedules`, blocking."""

    def __init__(self, schedules: Schedules, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__(call)
        self._a = schedules

    def create(
        self,
        name: str,
        cron: str,
        *,
        timezone: str = "UTC",
        queue: str = "default",
        kind: str = "",
        payload: dict[str, Any] | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        paused: bool = False,
    ) -> Schedule:
        return self._run(
            self._a.create(
                name,
                cron,
                timezone=timezone,
                queue=queue,
                kind=kind,
                payload=payload,
                priority=priority,
                max_attempts=max_attempts,
                paused=paused,
            )
        )

    def list(self) -> builtins.list[Schedule]:
        return self._run(self._a.list())

    def get(self, name: str) -> Schedule:
        return self._run(self._a.get(name))

    def update(
        self,
        name: str,
        *,
        rename: str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        payload: dict[str, Any] | None = None,
        priority: int | None = None,
        max_attempts: int | msgspec.UnsetType | None = msgspec.UNSET,
        paused: bool | None = None,
    ) -> Schedule:
        return self._run(
            self._a.update(
                name,
                rename=rename,
                cron=cron,
                timezone=timezone,
                queue=queue,
                kind=kind,
                payload=payload,
                priority=priority,
                max_attempts=max_attempts,
                paused=paused,
            )
        )

    def pause(self, name: str) -> Schedule:
        return self._run(self._a.pause(name))

    def resume(self, name: str) -> Schedule:
        return self._run(self._a.resume(name))

    def delete(self, name: str) -> None:
        self._run(self._a.delete(name))


class SyncRetryPolicies(_Namespace):
    """`ProducerClient.retry_policies`, blocking."""

    def __init__(self, policies: RetryPolicies, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__(call)
        self._a = policies

    def get(self, queue: str | None = None) -> RetryPolicyOut:
        return self._run(self._a.get(queue))

    def set(
        self,
        queue: str | None = None,
        *,
        max_attempts: int | None = None,
        retry_base_ms: int | None = None,
        retry_cap_ms: int | None = None,
    ) -> RetryPolicyOut:
        return self._run(
            self._a.set(queue, max_attempts=max_attempts, retry_base_ms=retry_base_ms, retry_cap_ms=retry_cap_ms)
        )

    def delete(self, queue: str) -> None:
        self._run(self._a.delete(queue))


class SyncQueues(_Namespace):
    """`ProducerClient.queues`, blocking."""

    def __init__(self, queues: Queues, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__(call)
        self._a = queues

    def pause(self, queue: str) -> QueueState:
        return self._run(self._a.pause(queue))

    def resume(self, queue: str) -> QueueState:
        return self._run(self._a.resume(queue))

    def paused(self) -> builtins.list[str]:
        return self._run(self._a.paused())


class SyncConsumers(_Namespace):
    """`ProducerClient.consumers`, blocking."""

    def __init__(self, consumers: Consumers, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__(call)
        self._a = consumers

    def create(self, name: str, start: Literal["oldest", "latest"] = "oldest", *, exist_ok: bool = False) -> Consumer:
        return self._run(self._a.create(name, start, exist_ok=exist_ok))

    def list(self) -> builtins.list[Consumer]:
        return self._run(self._a.list())

    def get(self, name: str) -> Consumer:
        return self._run(self._a.get(name))

    def read(self, name: str, *, limit: int = 100, wait_ms: int = 0) -> EventPage:
        return self._run(self._a.read(name, limit=limit, wait_ms=wait_ms))

    def ack(self, name: str, cursor: str) -> Consumer:
        return self._run(self._a.ack(name, cursor))

    def delete(self, name: str) -> None:
        self._run(self._a.delete(name))


class SyncWebhooks(_Namespace):
    """`ProducerClient.webhooks`, blocking."""

    def __init__(self, webhooks: Webhooks, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__(call)
        self._a = webhooks

    def create(self, url: str, *, event_types: Sequence[str] = (), secret: str | None = None) -> Webhook:
        return self._run(self._a.create(url, event_types=event_types, secret=secret))

    def list(self) -> builtins.list[Webhook]:
        return self._run(self._a.list())

    def get(self, webhook_id: str) -> Webhook:
        return self._run(self._a.get(webhook_id))

    def resume(self, webhook_id: str) -> Webhook:
        return self._run(self._a.resume(webhook_id))

    def delete(self, webhook_id: str) -> None:
        self._run(self._a.delete(webhook_id))
