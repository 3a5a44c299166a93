"""Runs handlers over leased jobs: the runner's life cycle and its lease loop.

Which handler runs a job and how is `_dispatch`; getting and extending leases is `_leases`;
batched acknowledgements are `_acks`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from core.wire import AckComplete, AckFail

from ._acks import AckBatcher
from ._backoff import retry_delay_s
from ._dispatch import NEVER, Dispatcher, RunningJob, resolve
from ._errors import ApiError, Forbidden, SdkError, Unauthorized, is_transient
from ._leases import Heartbeats, lease_or_stop
from ._outcome import Handler, HandlerT
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")

MAX_LEASE_BATCH = 100  # the server's limit for max_jobs
ABORT_FLUSH_TIMEOUT_S = 2.0
CLOSE_FLUSH_TIMEOUT_S = 30.0


@dataclass(slots=True, eq=False)
class _Session:
    """What one `run()` owns."""

    loop: asyncio.AbstractEventLoop
    running: set[RunningJob]
    stopping: asyncio.Event
    room: asyncio.Event  # set when a slot frees up (or to wake the lease loop)
    fatal_seen: asyncio.Event
    executor: ThreadPoolExecutor
    dispatcher: Dispatcher
    acks: AckBatcher
    heartbeats: Heartbeats


class WorkerRunner:
    """Leases jobs through `client` and runs a handler on each, up to `concurrency` at a time.

    The handler is chosen by the job's `kind`: one registered with `@runner.handler(kind)` or
    `runner.register(kind, fn)` (or passed as `handlers={kind: fn}`), else the default `handler`,
    else the one registered for the empty kind `""`. A job of a kind nobody handles fails as
    retryable. Coroutine functions run on the event loop; plain functions in a thread pool of
    `concurrency` threads.

    The handler's return value is the job's result. An exception fails the attempt as retryable
    with its traceback; raise `Retry(delay_ms)` to choose the delay, `Snooze(delay_ms)` to run it
    again later without counting the attempt, or `Cancel(reason)` to make the job `dead` at once.
    While a job runs its lease is extended every `lease_seconds / 3`; when the job's cancellation
    is requested, an async handler is cancelled and the job ends `cancelled`.

    Outcomes are sent in batches through `POST /v1/workers/ack`: as soon as `ack_batch_size` are
    waiting (default: `concurrency`), or `ack_flush_ms` after the first.

    `stop()` stops leasing at once; `run()` then waits up to `shutdown_timeout_s` for running
    handlers, fails those still running as retryable ("worker shutting down"), sends every
    outcome and returns. Cancelling the `run()` task instead abandons running jobs: their leases
    expire and they run again elsewhere.
    """

    def __init__(
        self,
        client: WorkerClient,
        handler: Handler | None = None,
        *,
        handlers: Mapping[str, Handler] | None = None,
        concurrency: int = 1,
        wait_ms: int = 30_000,
        lease_seconds: int = 30,
        shutdown_timeout_s: float = 30.0,
        ack_batch_size: int | None = None,
        ack_flush_ms: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if shutdown_timeout_s < 0:
            raise ValueError("shutdown_timeout_s must not be negative")
        self.client = client
        self.default_handler = handler
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.concurrency = concurrency
        self.wait_ms = wait_ms
        self.lease_seconds = lease_seconds
        self.shutdown_timeout_s = shutdown_timeout_s
        self.ack_batch_size = ack_batch_size or min(concurrency, 1000)
        self.ack_flush_ms = ack_flush_ms
        self._name = client.worker_id
        self._session: _Session | None = None
        self._stop_requested = False
        self._fatal: ApiError | None = None

    # --- handlers --------------------------------------------------------------------------

    def register(self, kind: str, fn: HandlerT) -> HandlerT:
        """Run `fn` for jobs of `kind`."""
        self.handlers[kind] = fn
        return fn

    def handler(self, kind: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator: `@runner.handler("email")` runs the function for jobs of kind "email"."""

        def decorate(fn: HandlerT) -> HandlerT:
            return self.register(kind, fn)

        return decorate

    @property
    def running(self) -> int:
        """Jobs whose handler is running now."""
        session = self._session
        return 0 if session is None else len(session.running)

    # --- life cycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop leasing at once; `run()` returns once running jobs are done (or failed after
        `shutdown_timeout_s`). Safe to call from another thread or a signal handler, and before
        `run()` has started."""
        self._stop_requested = True
        session = self._session
        if session is None or session.loop.is_closed():
            return
        try:
            same_loop = asyncio.get_running_loop() is session.loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._wake()
        else:
            session.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        session = self._session
        if session is not None:
            session.stopping.set()
            session.room.set()

    def _give_up(self, exc: ApiError) -> None:
        """A credential error seen by a lease, a heartbeat or the ack sender: `run()` stops and raises it."""
        if self._fatal is None:
            self._fatal = exc
        if self._session is not None:
            self._session.fatal_seen.set()
        self._wake()

    async def run(self) -> None:
        """Lease and run jobs until `stop()`. Transient errors (unreachable, 429, 5xx) are retried
        with backoff; `Unauthorized`, `Forbidden` and other 4xx answers to a lease are raised."""
        if self._session is not None:
            raise RuntimeError("this runner is already running")
        running: set[RunningJob] = set()
        executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"orch-{self._name}")
        self._session = session = _Session(
            loop=asyncio.get_running_loop(),
            running=running,
            stopping=asyncio.Event(),
            room=asyncio.Event(),
            fatal_seen=asyncio.Event(),
            executor=executor,
            dispatcher=Dispatcher(executor, self._name),
            acks=AckBatcher(
                self.client,
                batch_size=self.ack_batch_size,
                flush_s=self.ack_flush_ms / 1000,
                on_fatal=self._give_up,
                name=self._name,
            ),
            heartbeats=Heartbeats(
                self.client, running, lease_seconds=self.lease_seconds, on_fatal=self._give_up, name=self._name
            ),
        )
        if self._stop_requested:
            session.stopping.set()
        session.acks.start()
        session.heartbeats.start()
        stop_signal = asyncio.ensure_future(session.stopping.wait())
        try:
            try:
                await self._lease_loop(session, stop_signal)
            except asyncio.CancelledError:
                await self._abandon(session)
                raise
            except Exception:
                await self._drain(session)
                raise
            await self._drain(session)
        finally:
            stop_signal.cancel()
            await session.heartbeats.stop()
            executor.shutdown(wait=False, cancel_futures=True)
            self._session = None
            self._stop_requested = False
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

    async def _lease_loop(self, session: _Session, stop_signal: asyncio.Future[Any]) -> None:
        loop = session.loop
        running = session.running
        room_event = session.room
        execute: Callable[[RunningJob], Coroutine[Any, Any, None]] = partial(self._execute, session)
        failures = 0
        while not session.stopping.is_set():
            room = self.concurrency - len(running)
            if room <= 0:
                # Woken by the first handler to finish (or by stop()), not by a timer.
                room_event.clear()
                await room_event.wait()
                continue
            # Outcomes waiting go with the lease: one request where there would be two.
            carried = session.acks.take_for_lease()
            try:
                answer = await lease_or_stop(
                    self.client,
                    stop_signal,
                    max_jobs=min(room, MAX_LEASE_BATCH),
                    wait_ms=self.wait_ms,
                    lease_seconds=self.lease_seconds,
                    complete=[p.item for p in carried if isinstance(p.item, AckComplete)],
                    fail=[p.item for p in carried if isinstance(p.item, AckFail)],
                )
            except (Unauthorized, Forbidden) as exc:
                session.acks.requeue(carried)
                self._give_up(exc)
                return
            except SdkError as exc:
                session.acks.requeue(carried)
                if not is_transient(exc):
                    raise
                failures += 1
                delay = retry_delay_s(failures, exc)
                log.warning("worker %s: lease failed (%s); retrying in %.2f s", self._name, exc, delay)
                await asyncio.wait({stop_signal}, timeout=delay)
                continue
            failures = 0
            if answer is None:  # stopping: the gateway may not have had them
                session.acks.requeue(carried)
                continue
            if carried:
                session.acks.delivered(carried, answer.results)
            jobs = answer.jobs
            if not jobs:
                continue
            beat_at = loop.time() + self.lease_seconds / 3
            for job in jobs:
                running.add(RunningJob(job, beat_at, execute))

    async def _execute(self, session: _Session, state: RunningJob) -> None:
        """A job's whole life in its one task: run the handler, queue the outcome, free the slot."""
        job = state.job
        try:
            outcome = await session.dispatcher.run(state, resolve(job.kind, self.handlers, self.default_handler))
            state.done = True
            session.acks.add(job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: job %s: unexpected error in the runner", self._name, job.id)
        finally:
            state.done = True
            state.beat_at = NEVER
            session.running.discard(state)
            session.room.set()

    async def _drain(self, session: _Session) -> None:
        """Let running handlers finish up to the deadline, interrupt the rest, send every outcome."""
        if self._fatal is None and session.running:
            log.info(
                "worker %s: stopping; waiting up to %.1f s for %d running jobs",
                self._name,
                self.shutdown_timeout_s,
                len(session.running),
            )
            loop = session.loop
            deadline = loop.time() + self.shutdown_timeout_s
            fatal = asyncio.ensure_future(session.fatal_seen.wait())
            try:
                while session.running and self._fatal is None and (left := deadline - loop.time()) > 0:
                    await asyncio.wait({fatal, *_tasks(session)}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                fatal.cancel()
            if session.running and self._fatal is None:
                log.warning(
                    "worker %s: %d jobs still running after %.1f s; failing them as retryable",
                    self._name,
                    len(session.running),
                    self.shutdown_timeout_s,
                )
                for state in list(session.running):
                    state.interrupt("shutdown")
                await asyncio.wait(_tasks(session))
        if self._fatal is not None:
            await self._abandon(session)
            return
        if not await session.acks.finish(CLOSE_FLUSH_TIMEOUT_S):
            log.error("worker %s: could not report every outcome within %.0f s", self._name, CLOSE_FLUSH_TIMEOUT_S)

    async def _abandon(self, session: _Session) -> None:
        """Cancel everything without reporting the jobs that run; send what already finished, briefly."""
        tasks = _tasks(session)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        session.running.clear()  # a task cancelled before it started never removed its job
        try:
            if self._fatal is None:
                await session.acks.finish(ABORT_FLUSH_TIMEOUT_S)
        finally:
            await session.acks.abort()


def _tasks(session: _Session) -> set[asyncio.Task[None]]:
    return {state.task for state in session.running}
