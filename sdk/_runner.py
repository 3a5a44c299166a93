"""Runs handlers over leased jobs: long-poll, dispatch by kind, heartbeat, batched
acknowledgements, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from core.wire import LeasedJob

from ._acks import AckBatcher
from ._backoff import backoff_s
from ._errors import ApiError, Conflict, Forbidden, NotFound, SdkError, Unauthorized, is_transient
from ._outcome import Handler, HandlerT, Outcome, interrupted, is_async, run_job
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")

MAX_LEASE_BATCH = 100  # the server's limit for max_jobs
ABORT_FLUSH_TIMEOUT_S = 2.0
CLOSE_FLUSH_TIMEOUT_S = 30.0

Interrupt = Literal["cancel_requested", "shutdown"]

NEVER = math.inf


class _Running:
    """One leased job while its task runs. `beat_at` is the loop time its next heartbeat is due
    (NEVER while one is in flight, or once heartbeats for it have stopped)."""

    __slots__ = ("beat_at", "done", "failures", "interrupt", "interruptible", "job", "started", "task")

    def __init__(self, job: LeasedJob, beat_at: float) -> None:
        self.job = job
        self.beat_at = beat_at
        self.task: asyncio.Task[None] | None = None
        self.started = False  # the handler was called: an interruption now cancels the task
        self.done = False  # the outcome is known
        self.interrupt: Interrupt | None = None
        self.interruptible = False  # a coroutine handler: a cancellation request can stop it
        self.failures = 0  # heartbeats failed in a row


class WorkerRunner:
    """Leases jobs through `client` and runs a handler on each, up to `concurrency` at a time.

    The handler is chosen by the job's `kind`: one registered with `@runner.handler(kind)` or
    `runner.register(kind, fn)` (or passed as `handlers={kind: fn}`), else the default `handler`.
    A job of a kind nobody handles fails as retryable. Coroutine functions run on the event loop;
    plain functions in a thread pool of `concurrency` threads.

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        self._fatal: ApiError | None = None
        self._fatal_seen: asyncio.Event | None = None
        self._running: set[_Running] = set()
        self._room: asyncio.Event | None = None  # set when a slot frees up (or to wake the lease loop)
        self._executor: ThreadPoolExecutor | None = None
        self._acks: AckBatcher | None = None
        # Heartbeats: one timer per runner scans the running jobs for those due.
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_at = NEVER
        self._beats: set[asyncio.Task[None]] = set()
        # id(handler) -> (handler, is it a coroutine function?); the handler is kept so the id stays its own.
        self._kinds: dict[int, tuple[Handler, bool]] = {}

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
        return len(self._running)

    # --- life cycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop leasing at once; `run()` returns once running jobs are done (or failed after
        `shutdown_timeout_s`). Safe to call from another thread or a signal handler, and before
        `run()` has started."""
        self._stop_requested = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._room is not None:
            self._room.set()

    def _give_up(self, exc: ApiError) -> None:
        """A credential error seen by a job task or the ack sender: `run()` stops and raises it."""
        if self._fatal is None:
            self._fatal = exc
        if self._fatal_seen is not None:
            self._fatal_seen.set()
        self._wake()

    async def run(self) -> None:
        """Lease and run jobs until `stop()`. Transient errors (unreachable, 429, 5xx) are retried
        with backoff; `Unauthorized`, `Forbidden` and other 4xx answers to a lease are raised."""
        if self._loop is not None:
            raise RuntimeError("this runner is already running")
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self._fatal_seen = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"orch-{self._name}")
        self._acks = AckBatcher(
            self.client,
            batch_size=self.ack_batch_size,
            flush_s=self.ack_flush_ms / 1000,
            on_fatal=self._give_up,
            name=self._name,
        )
        self._acks.start()
        self._schedule_tick(loop.time() + self.lease_seconds / 3)
        stop_signal = asyncio.ensure_future(self._stopping.wait())
        try:
            try:
                await self._lease_loop(stop_signal)
            except asyncio.CancelledError:
                await self._abandon()
                raise
            except Exception:
                await self._drain()
                raise
            await self._drain()
        finally:
            stop_signal.cancel()
            await self._stop_heartbeats()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._acks = None
            self._fatal_seen = None
            self._loop = None
            self._stopping = None
            self._room = None
            self._stop_requested = False
            self._kinds.clear()
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

    async def _lease_loop(self, stop_signal: asyncio.Future[Any]) -> None:
        assert self._stopping is not None
        assert self._room is not None
        loop = asyncio.get_running_loop()
        running = self._running
        room_event = self._room
        failures = 0
        while not self._stopping.is_set():
            room = self.concurrency - len(running)
            if room <= 0:
                # Woken by the first handler to finish (or by stop()), not by a timer.
                room_event.clear()
                await room_event.wait()
                continue
            try:
                jobs = await self._lease(min(room, MAX_LEASE_BATCH), stop_signal)
            except (Unauthorized, Forbidden) as exc:
                self._give_up(exc)
                return
            except SdkError as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                delay = backoff_s(failures, exc)
                log.warning("worker %s: lease failed (%s); retrying in %.2f s", self._name, exc, delay)
                await asyncio.wait({stop_signal}, timeout=delay)
                continue
            failures = 0
            if not jobs:
                continue
            beat_at = loop.time() + self.lease_seconds / 3
            execute = self._execute
            for job in jobs:
                state = _Running(job, beat_at)
                state.task = loop.create_task(execute(state))
                running.add(state)

    async def _drain(self) -> None:
        """Let running handlers finish up to the deadline, interrupt the rest, send every outcome."""
        assert self._acks is not None
        assert self._fatal_seen is not None
        if self._fatal is None and self._running:
            log.info(
                "worker %s: stopping; waiting up to %.1f s for %d running jobs",
                self._name,
                self.shutdown_timeout_s,
                len(self._running),
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.shutdown_timeout_s
            fatal = asyncio.ensure_future(self._fatal_seen.wait())
            try:
                while self._running and self._fatal is None and (left := deadline - loop.time()) > 0:
                    await asyncio.wait({fatal, *self._tasks()}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                fatal.cancel()
            if self._running and self._fatal is None:
                log.warning(
                    "worker %s: %d jobs still running after %.1f s; failing them as retryable",
                    self._name,
                    len(self._running),
                    self.shutdown_timeout_s,
                )
                for state in list(self._running):
                    self._interrupt(state, "shutdown")
                await asyncio.wait(self._tasks())
        if self._fatal is not None:
            await self._abandon()
            return
        try:
            await asyncio.wait_for(self._acks.close(), CLOSE_FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.error("worker %s: could not report every outcome within %.0f s", self._name, CLOSE_FLUSH_TIMEOUT_S)

    def _tasks(self) -> set[asyncio.Task[None]]:
        return {s.task for s in self._running if s.task is not None}

    async def _abandon(self) -> None:
        """Cancel everything without reporting the jobs that run; send what already finished, briefly."""
        assert self._acks is not None
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._running.clear()  # a task cancelled before it started never removed its job
        try:
            if self._fatal is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acks.close(), ABORT_FLUSH_TIMEOUT_S)
        finally:
            await self._acks.abort()

    def _interrupt(self, state: _Running, reason: Interrupt) -> None:
        """Stop a job's handler; the first reason given is the one reported."""
        if state.done or state.interrupt is not None:
            return
        state.interrupt = reason
        if state.started and state.task is not None:
            state.task.cancel()
        # else: not started yet, and it will not start

    async def _lease(self, room: int, stop_signal: asyncio.Future[Any]) -> list[LeasedJob]:
        lease = asyncio.ensure_future(
            self.client.lease(max_jobs=room, wait_ms=self.wait_ms, lease_seconds=self.lease_seconds)
        )
        try:
            await asyncio.wait({lease, stop_signal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not lease.done():
                # Dropping the connection makes the gateway unpark the request at once. A job it
                # leased in that instant is lost to us; its lease expires and it runs again.
                lease.cancel()
                await asyncio.wait({lease})
        return [] if lease.cancelled() else lease.result()

    # --- one job ---------------------------------------------------------------------------

    def _resolve(self, kind: str) -> tuple[Handler | None, bool]:
        """The handler for `kind`, and whether it is a coroutine function (worked out once per handler)."""
        handler = self.handlers.get(kind, self.default_handler)
        if handler is None:
            return None, False
        known = self._kinds.get(id(handler))
        if known is None or known[0] is not handler:
            known = self._kinds[id(handler)] = (handler, is_async(handler))
        return handler, known[1]

    async def _execute(self, state: _Running) -> None:
        """A job's whole life in its one task: run the handler, queue the outcome, free the slot."""
        job = state.job
        try:
            if state.interrupt is not None:
                outcome = interrupted(state.interrupt)
            else:
                state.started = True
                outcome = await self._run_handler(state)
            state.done = True
            if self._acks is not None:
                self._acks.add(job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: job %s: unexpected error in the runner", self._name, job.id)
        finally:
            state.done = True
            state.beat_at = NEVER
            self._running.discard(state)
            if self._room is not None:
                self._room.set()

    async def _run_handler(self, state: _Running) -> Outcome:
        job = state.job
        handler, asynchronous = self._resolve(job.kind)
        if handler is None:
            log.error("worker %s: job %s: no handler for kind %r", self._name, job.id, job.kind)
        # A cancellation request can stop a coroutine; a thread cannot be stopped and runs on.
        state.interruptible = asynchronous
        try:
            return await run_job(handler, job, self._executor, asynchronous=asynchronous)
        except asyncio.CancelledError:
            task = state.task
            assert task is not None
            if state.interrupt is not None:
                # Our own cancel: take it back; if anything else is left, the runner is being cancelled.
                if task.uncancel() == 0:
                    return interrupted(state.interrupt)
                raise
            if task.cancelling():
                raise  # the runner itself is being cancelled: abandon the job
            return interrupted("unexpected")

    # --- heartbeats ------------------------------------------------------------------------

    def _schedule_tick(self, when: float) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
        self._tick_at = when
        self._ticker = loop.call_at(when, self._tick)

    def _tick(self) -> None:
        """Start a heartbeat for every running job that is due one; sleep until the next is due.
        A job that ends before its first heartbeat is due costs nothing here."""
        loop = self._loop
        if loop is None:
            return
        interval = self.lease_seconds / 3
        now = loop.time()
        horizon = now + interval / 10  # beat a little early rather than wake again for it
        next_at = now + interval  # a job leased from now on is first due no sooner
        for state in self._running:
            at = state.beat_at
            if at <= horizon:
                state.beat_at = NEVER
                task = loop.create_task(self._beat(state))
                self._beats.add(task)
                task.add_done_callback(self._beats.discard)
            elif at < next_at:
                next_at = at
        self._ticker = None
        self._schedule_tick(next_at)

    def _beat_again(self, state: _Running, delay: float) -> None:
        if state.done or self._loop is None:
            return
        state.beat_at = at = self._loop.time() + delay
        if at < self._tick_at:
            self._schedule_tick(at)

    async def _beat(self, state: _Running) -> None:
        """One heartbeat; interrupt the handler when the job's cancellation is requested."""
        job = state.job
        interval = self.lease_seconds / 3
        try:
            beat = await self.client.heartbeat(job.id, job.lease_token, extend_seconds=self.lease_seconds)
        except (Conflict, NotFound) as exc:
            if not state.done:
                log.warning("worker %s: job %s: lease lost (%s)", self._name, job.id, exc.detail)
            return
        except (Unauthorized, Forbidden) as exc:
            self._give_up(exc)
            return
        except SdkError as exc:
            if state.done:
                return
            if not is_transient(exc):
                log.error("worker %s: job %s: heartbeat refused: %s", self._name, job.id, exc)
                return
            state.failures += 1
            log.warning("worker %s: job %s: heartbeat failed (%s)", self._name, job.id, exc)
            self._beat_again(state, min(interval, backoff_s(state.failures)))
            return
        except Exception:
            log.exception("worker %s: job %s: unexpected error in a heartbeat", self._name, job.id)
            self._beat_again(state, interval)
            return
        state.failures = 0
        if beat.cancel_requested and state.interruptible and not state.done:
            log.info("worker %s: job %s: cancellation requested; stopping the handler", self._name, job.id)
            self._interrupt(state, "cancel_requested")
            return
        self._beat_again(state, interval)

    async def _stop_heartbeats(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._tick_at = NEVER
        beats = set(self._beats)
        for task in beats:
            task.cancel()
        if beats:
            await asyncio.wait(beats)
