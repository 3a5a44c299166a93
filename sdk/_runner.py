"""Runs a handler over leased jobs: long-poll, heartbeat, complete or fail, stop gracefully."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from core.wire import Job, LeasedJob

from ._backoff import backoff_s
from ._errors import ApiError, Cancel, Conflict, Forbidden, NotFound, Retry, SdkError, Unauthorized, is_transient
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")

Handler = Callable[[dict[str, Any]], Any]
"""`handler(payload) -> result`: a coroutine function, or a plain function run in a thread."""

REPORT_ATTEMPTS = 5
MAX_ERROR_CHARS = 65_536  # the server's limit for `error`

_encoder = msgspec.json.Encoder()


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


def _clip(text: str) -> str:
    # The end of a traceback says the most.
    return text if len(text) <= MAX_ERROR_CHARS else "…" + text[-(MAX_ERROR_CHARS - 1) :]


class WorkerRunner:
    """Leases jobs through `client` and runs `handler(job.payload)` on each, up to `concurrency`
    at a time.

    The handler's return value is the job's result. An exception fails the attempt as retryable
    with its traceback; raise `Retry(delay_ms)` to choose the delay, or `Cancel(reason)` to make
    the job `dead` at once. While a job runs its lease is extended every `lease_seconds / 3`; when
    the job's cancellation is requested, an async handler is cancelled and the job failed for good.

    `stop()` makes `run()` return promptly, after the jobs already running have finished.
    Cancelling the `run()` task instead abandons running jobs: their leases expire and they run
    again elsewhere.
    """

    def __init__(
        self,
        client: WorkerClient,
        handler: Handler,
        *,
        concurrency: int = 1,
        wait_ms: int = 30_000,
        lease_seconds: int = 30,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.handler = handler
        self.concurrency = concurrency
        self.wait_ms = wait_ms
        self.lease_seconds = lease_seconds
        self._async_handler = _is_async(handler)
        self._name = client.worker_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        self._fatal: ApiError | None = None

    def stop(self) -> None:
        """Stop leasing at once and let `run()` return once running jobs are done. Safe to call
        from another thread or a signal handler, and before `run()` has started."""
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

    def _give_up(self, exc: ApiError) -> None:
        """A credential error seen by a job task: `run()` stops and raises it."""
        if self._fatal is None:
            self._fatal = exc
        self._wake()

    async def run(self) -> None:
        """Lease and run jobs until `stop()`. Transient errors (unreachable, 429, 5xx) are retried
        with backoff; `Unauthorized`, `Forbidden` and other 4xx answers to a lease are raised."""
        if self._loop is not None:
            raise RuntimeError("this runner is already running")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        stop_signal = asyncio.ensure_future(self._stopping.wait())
        running: set[asyncio.Task[None]] = set()
        failures = 0
        try:
            while not self._stopping.is_set():
                room = self.concurrency - len(running)
                if room <= 0:
                    await asyncio.wait({stop_signal, *running}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    jobs = await self._lease(room, stop_signal)
                except SdkError as exc:
                    if not is_transient(exc):
                        raise
                    failures += 1
                    delay = backoff_s(failures, exc)
                    log.warning("worker %s: lease failed (%s); retrying in %.2f s", self._name, exc, delay)
                    await asyncio.wait({stop_signal}, timeout=delay)
                    continue
                failures = 0
                for job in jobs:
                    task = asyncio.create_task(self._execute(job), name=f"orchestrator-job-{job.id}")
                    running.add(task)
                    task.add_done_callback(running.discard)
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            raise
        finally:
            stop_signal.cancel()
            if running:
                await asyncio.wait(set(running))
            self._loop = None
            self._stopping = None
            self._stop_requested = False
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

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

    async def _call(self, payload: dict[str, Any]) -> Any:
        if self._async_handler:
            return await self.handler(payload)
        result = await asyncio.to_thread(self.handler, payload)
        return await result if inspect.isawaitable(result) else result

    async def _execute(self, job: LeasedJob) -> None:
        try:
            report = await self._run_handler(job)
            await self._report(job, report)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: job %s: unexpected error in the runner", self._name, job.id)

    async def _run_handler(self, job: LeasedJob) -> Callable[[], Awaitable[Job]]:
        """Run the handler; returns the call that reports its outcome."""
        c = self.client
        work = asyncio.ensure_future(self._call(job.payload))
        beat = asyncio.ensure_future(self._keep_alive(job, work))
        try:
            result = await work
            encoded = msgspec.Raw(_encoder.encode(result))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            asked = beat.done() and not beat.cancelled() and beat.result()
            if not asked or (current is not None and current.cancelling()):
                raise
            return functools.partial(
                c.fail, job.id, job.lease_token, "cancelled: cancellation was requested", retryable=False
            )
        except Retry as r:
            return functools.partial(
                c.fail, job.id, job.lease_token, _clip(r.reason), retryable=True, retry_in_ms=r.delay_ms
            )
        except Cancel as e:
            return functools.partial(c.fail, job.id, job.lease_token, _clip(e.reason), retryable=False)
        except Exception:
            return functools.partial(c.fail, job.id, job.lease_token, _clip(traceback.format_exc()), retryable=True)
        finally:
            beat.cancel()
            await asyncio.wait({beat})
        return functools.partial(c.complete, job.id, job.lease_token, encoded)

    async def _keep_alive(self, job: LeasedJob, work: asyncio.Future[Any]) -> bool:
        """Heartbeat until cancelled. Returns True after cancelling `work` because the job's
        cancellation was requested; False when the lease is gone."""
        interval = self.lease_seconds / 3
        failures = 0
        while True:
            await asyncio.sleep(min(interval, backoff_s(failures)) if failures else interval)
            try:
                beat = await self.client.heartbeat(job.id, job.lease_token, extend_seconds=self.lease_seconds)
            except (Conflict, NotFound) as exc:
                log.warning("worker %s: job %s: lease lost (%s)", self._name, job.id, exc.detail)
                return False
            except (Unauthorized, Forbidden) as exc:
                self._give_up(exc)
                return False
            except SdkError as exc:
                if not is_transient(exc):
                    log.error("worker %s: job %s: heartbeat refused: %s", self._name, job.id, exc)
                    return False
                failures += 1
                log.warning("worker %s: job %s: heartbeat failed (%s)", self._name, job.id, exc)
                continue
            failures = 0
            if beat.cancel_requested and self._async_handler:
                log.info("worker %s: job %s: cancellation requested; stopping the handler", self._name, job.id)
                work.cancel()
                return True

    async def _report(self, job: LeasedJob, send: Callable[[], Awaitable[Job]]) -> None:
        """Send the outcome; complete and fail are safe to repeat, so transient errors are retried."""
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                await send()
                return
            except Conflict as exc:
                log.warning("worker %s: job %s: lease lost, outcome refused (%s)", self._name, job.id, exc.detail)
                return
            except (Unauthorized, Forbidden) as exc:
                self._give_up(exc)
                return
            except SdkError as exc:
                if not is_transient(exc):
                    log.error("worker %s: job %s: outcome refused: %s", self._name, job.id, exc)
                    return
                if attempt == REPORT_ATTEMPTS:
                    log.error(
                        "worker %s: job %s: could not report its outcome (%s); it runs again once its lease expires",
                        self._name,
                        job.id,
                        exc,
                    )
                    return
                await asyncio.sleep(backoff_s(attempt, exc))
