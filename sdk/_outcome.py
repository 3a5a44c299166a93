"""Calling a handler and turning what it did into the job's outcome: one code path for the
runner and for `sdk.testing`."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from core.wire import AckComplete, AckFail, Job

from ._errors import Cancel, Retry, Snooze

Handler = Callable[[dict[str, Any]], Any]
"""`handler(payload) -> result`: a coroutine function, or a plain function run in a thread."""

HandlerT = TypeVar("HandlerT", bound=Handler)

Status = Literal["completed", "retried", "snoozed", "cancelled", "failed"]

MAX_ERROR_CHARS = 65_536  # the server's limit for `error`

_encoder = msgspec.json.Encoder()
_current_job: contextvars.ContextVar[Job] = contextvars.ContextVar("orchestrator_current_job")


def current_job() -> Job:
    """The job the calling handler runs for (its id, kind, attempt, ...). Works in async and in
    sync handlers; raises LookupError outside a handler."""
    return _current_job.get()


def clip(text: str) -> str:
    # The end of a traceback says the most.
    return text if len(text) <= MAX_ERROR_CHARS else "…" + text[-(MAX_ERROR_CHARS - 1) :]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one run of a handler, and what the worker reports for it.

    - `completed`: the handler returned `result` (JSON-encodable).
    - `retried`: it raised `Retry`; the job runs again after `delay_ms` (None: the server's backoff).
    - `snoozed`: it raised `Snooze`; the job runs again after `delay_ms`, the attempt not counted.
    - `cancelled`: it raised `Cancel`, or its cancellation was requested; the job is never retried.
    - `failed`: any other exception (`error` is its traceback), or the worker shut down; retried
      with backoff while attempts remain.
    """

    status: Status
    result: Any = None
    error: str | None = None
    delay_ms: int | None = None
    exception: BaseException | None = None
    encoded: msgspec.Raw | None = None  # the result as sent

    @property
    def retryable(self) -> bool:
        return self.status not in ("completed", "cancelled")

    def ack(self, job_id: str, lease_token: int) -> AckComplete | AckFail:
        """This outcome as one item of `POST /v1/workers/ack`."""
        if self.status == "completed":
            return AckComplete(id=job_id, lease_token=lease_token, result=self.encoded)
        return AckFail(
            id=job_id,
            lease_token=lease_token,
            error=self.error or self.status,
            retryable=self.retryable,
            retry_in_ms=self.delay_ms,
            snooze=self.status == "snoozed",
        )


def completed(result: Any) -> Outcome:
    """A returned value; one that cannot be encoded as JSON fails the attempt instead."""
    if result is None:
        return _COMPLETED_NONE
    try:
        encoded = msgspec.Raw(_encoder.encode(result))
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        return outcome_of(exc)
    return Outcome("completed", result=result, encoded=encoded)


_COMPLETED_NONE = Outcome("completed", result=None, encoded=msgspec.Raw(b"null"))  # immutable: one will do


def outcome_of(exc: BaseException) -> Outcome:
    """The outcome a handler's exception stands for."""
    if isinstance(exc, Snooze):
        return Outcome("snoozed", error=clip(exc.reason), delay_ms=exc.delay_ms, exception=exc)
    if isinstance(exc, Retry):
        return Outcome("retried", error=clip(exc.reason), delay_ms=exc.delay_ms, exception=exc)
    if isinstance(exc, Cancel):
        return Outcome("cancelled", error=clip(exc.reason), exception=exc)
    return Outcome("failed", error=clip("".join(traceback.format_exception(exc))), exception=exc)


def interrupted(reason: Literal["cancel_requested", "shutdown", "unexpected"]) -> Outcome:
    """The outcome of a handler the worker stopped."""
    if reason == "cancel_requested":
        return Outcome("cancelled", error="cancelled: cancellation was requested")
    if reason == "shutdown":
        # Not the job's fault: let another worker take it at once.
        return Outcome("failed", error="worker shutting down", delay_ms=0)
    return Outcome("failed", error="the handler was cancelled")


def is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


async def call(handler: Handler, payload: dict[str, Any], executor: Executor | None) -> Any:
    """Await an async handler; run a plain one in `executor` (the loop's default when None)."""
    if is_async(handler):
        return await handler(payload)
    # The thread sees the same context, so current_job() works there too.
    ctx = contextvars.copy_context()
    result = await asyncio.get_running_loop().run_in_executor(executor, ctx.run, handler, payload)
    return await result if inspect.isawaitable(result) else result


def _span(job: Job) -> contextlib.AbstractContextManager[object]:
    """The handler's span, a child of the submit's trace, when OpenTelemetry is installed (it
    records only where the worker process configures a tracer provider)."""
    if job.traceparent is None:
        return contextlib.nullcontext()
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return contextlib.nullcontext()
    parent = propagate.extract({"traceparent": job.traceparent})
    span: contextlib.AbstractContextManager[object] = trace.get_tracer("orchestrator.sdk").start_as_current_span(
        f"job {job.kind or job.queue}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        # The gateway's request spans carry the same names.
        attributes={"orch.job_id": job.id, "orch.tenant": job.tenant_id, "orch.queue": job.queue},
    )
    return span


async def run_job(
    handler: Handler | None, job: Job, executor: Executor | None = None, *, asynchronous: bool | None = None
) -> Outcome:
    """Run `handler` on `job.payload` and map what happens to an Outcome. Cancellation of the
    calling task propagates: the caller decides what an interruption means. `asynchronous` says
    whether the handler is a coroutine function, when the caller already knows."""
    if handler is None:
        # Retryable: a worker that knows this kind may take it next time.
        return Outcome("failed", error=f"no handler for job kind {job.kind!r}")
    if asynchronous is None:
        asynchronous = is_async(handler)
    token = _current_job.set(job)
    try:
        if job.traceparent is None:  # no trace to continue: no span (the common case, kept cheap)
            result = await handler(job.payload) if asynchronous else await call(handler, job.payload, executor)
        else:
            with _span(job):
                result = await call(handler, job.payload, executor)
    except Exception as exc:
        return outcome_of(exc)
    finally:
        _current_job.reset(token)
    return completed(result)
