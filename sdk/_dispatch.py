"""Which handler runs a job, and running it on a leased job.

One rule for `WorkerRunner`, `orchestrator worker` and `sdk.testing`: a job goes to the handler
registered for its kind, else to the default handler — the runner's `handler`, or the entry
for the empty kind `""`. A kind with neither fails as retryable.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import Any, Literal

from core.wire import LeasedJob

from ._outcome import Handler, Outcome, interrupted, is_async, run_job

log = logging.getLogger("orchestrator.sdk")

DEFAULT_KIND = ""

Interrupt = Literal["cancel_requested", "shutdown"]

NEVER = math.inf


def resolve(kind: str, handlers: Mapping[str, Handler], default: Handler | None = None) -> Handler | None:
    """The handler for a job of `kind`: its own, else `default`, else the `""` entry; None when
    there is none."""
    handler = handlers.get(kind)
    if handler is not None:
        return handler
    if default is not None:
        return default
    return handlers.get(DEFAULT_KIND)


class RunningJob:
    """One leased job and the task that runs it, from the lease to its queued outcome.

    `beat_at` is the loop time its next heartbeat is due (NEVER while one is in flight, or once
    heartbeats for it have stopped)."""

    __slots__ = ("beat_at", "done", "failures", "interrupted_by", "interruptible", "job", "started", "task")

    def __init__(self, job: LeasedJob, beat_at: float, run: Callable[[RunningJob], Coroutine[Any, Any, None]]) -> None:
        self.job = job
        self.beat_at = beat_at
        self.started = False  # the handler was called: an interruption now cancels the task
        self.done = False  # the outcome is known
        self.interrupted_by: Interrupt | None = None
        self.interruptible = False  # a coroutine handler: a cancellation request can stop it
        self.failures = 0  # heartbeats failed in a row
        # Created last: the task first runs once the loop next turns, with this object complete.
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(run(self))

    def interrupt(self, reason: Interrupt) -> None:
        """Stop the handler; the first reason given is the one reported."""
        if self.done or self.interrupted_by is not None:
            return
        self.interrupted_by = reason
        if self.started:
            self.task.cancel()
        # else: not started yet, and it will not start


class Dispatcher:
    """Runs handlers on leased jobs: coroutine functions on the loop, plain functions in
    `executor`. Called from the job's own task."""

    def __init__(self, executor: Executor, name: str) -> None:
        self._executor = executor
        self._name = name
        # id(handler) -> (handler, is it a coroutine function?); the handler is kept so the id stays its own.
        self._kinds: dict[int, tuple[Handler, bool]] = {}

    def _is_async(self, handler: Handler) -> bool:
        known = self._kinds.get(id(handler))
        if known is None or known[0] is not handler:
            known = self._kinds[id(handler)] = (handler, is_async(handler))
        return known[1]

    async def run(self, state: RunningJob, handler: Handler | None) -> Outcome:
        """The outcome of running `handler` on the job, or of the job's interruption."""
        job = state.job
        if state.interrupted_by is not None:
            return interrupted(state.interrupted_by)
        state.started = True
        if handler is None:
            log.error("worker %s: job %s: no handler for kind %r", self._name, job.id, job.kind)
            return await run_job(None, job)
        asynchronous = self._is_async(handler)
        # A cancellation request can stop a coroutine; a thread cannot be stopped and runs on.
        state.interruptible = asynchronous
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("worker %s: job %s: started (attempt %d)", self._name, job.id, job.attempts, extra=self._ids(job))
        try:
            outcome = await run_job(handler, job, self._executor, asynchronous=asynchronous)
            self._log(job, outcome, debug)
            return outcome
        except asyncio.CancelledError:
            if state.interrupted_by is not None:
                # Our own cancel: take it back; if anything else is left, the runner is being cancelled.
                if state.task.uncancel() == 0:
                    return interrupted(state.interrupted_by)
                raise
            if state.task.cancelling():
                raise  # the runner itself is being cancelled: abandon the job
            return interrupted("unexpected")

    def _log(self, job: LeasedJob, outcome: Outcome, debug: bool) -> None:
        ids = self._ids(job)
        if outcome.status == "completed":
            if debug:
                log.debug("worker %s: job %s: succeeded", self._name, job.id, extra=ids)
            return
        last = outcome.status == "cancelled" or (outcome.status == "failed" and job.attempts >= job.max_attempts)
        exc = outcome.exception
        exc_info = (type(exc), exc, exc.__traceback__) if outcome.status == "failed" and exc is not None else None
        if last:
            log.error(
                "worker %s: job %s: %s on attempt %d of %d; it ends %s",
                self._name,
                job.id,
                outcome.status,
                job.attempts,
                job.max_attempts,
                "cancelled" if outcome.status == "cancelled" else "dead",
                extra=ids,
                exc_info=exc_info,
            )
        elif outcome.status == "failed":
            log.warning(
                "worker %s: job %s: failed on attempt %d of %d; it will be retried",
                self._name,
                job.id,
                job.attempts,
                job.max_attempts,
                extra=ids,
                exc_info=exc_info,
            )
        elif debug:
            log.debug("worker %s: job %s: %s", self._name, job.id, outcome.status, extra=ids)

    def _ids(self, job: LeasedJob) -> dict[str, str]:
        return {"job_id": job.id, "tenant_id": job.tenant_id, "worker_id": self._name}
