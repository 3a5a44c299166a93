"""Getting and keeping leases: a long-poll that stopping drops, and the heartbeats that extend
the leases of running jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

from core.wire import AckComplete, AckFail, LeaseResponse

from ._backoff import retry_delay_s
from ._dispatch import NEVER, RunningJob
from ._errors import ApiError, Conflict, Forbidden, NotFound, SdkError, Unauthorized, is_transient
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")


async def lease_or_stop(
    client: WorkerClient,
    stop_signal: asyncio.Future[Any],
    *,
    max_jobs: int,
    wait_ms: int,
    lease_seconds: int,
    complete: Sequence[AckComplete] = (),
    fail: Sequence[AckFail] = (),
) -> LeaseResponse | None:
    """One long-poll for up to `max_jobs`, carrying these acknowledgements; None as soon as
    `stop_signal` is done (the acknowledgements may or may not have been delivered)."""
    lease = asyncio.ensure_future(
        client.lease_and_ack(
            max_jobs=max_jobs, wait_ms=wait_ms, lease_seconds=lease_seconds, complete=complete, fail=fail
        )
    )
    try:
        await asyncio.wait({lease, stop_signal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not lease.done():
            # Dropping the connection makes the gateway unpark the request at once. A job it
            # leased in that instant is lost to us; its lease expires and it runs again.
            lease.cancel()
            await asyncio.wait({lease})
    return None if lease.cancelled() else lease.result()


class Heartbeats:
    """Extends the lease of every job in `running` every `lease_seconds / 3` by `lease_seconds`.

    One timer scans the running jobs for those due, so a job that ends before its first
    heartbeat is due costs nothing. A heartbeat answering `cancel_requested` interrupts a
    coroutine handler; 401/403 go to `on_fatal`."""

    def __init__(
        self,
        client: WorkerClient,
        running: Collection[RunningJob],
        *,
        lease_seconds: int,
        on_fatal: Callable[[ApiError], None],
        name: str,
    ) -> None:
        self._client = client
        self._running = running
        self._lease_seconds = lease_seconds
        self._interval = lease_seconds / 3
        self._on_fatal = on_fatal
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_at = NEVER
        self._beats: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._schedule_tick(loop.time() + self._interval)

    async def stop(self) -> None:
        self._loop = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._tick_at = NEVER
        beats = set(self._beats)
        for task in beats:
            task.cancel()
        if beats:
            await asyncio.wait(beats)

    def _schedule_tick(self, when: float) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
        self._tick_at = when
        self._ticker = loop.call_at(when, self._tick)

    def _tick(self) -> None:
        """Start a heartbeat for every running job that is due one; sleep until the next is due."""
        loop = self._loop
        if loop is None:
            return
        interval = self._interval
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

    def _beat_again(self, state: RunningJob, delay: float) -> None:
        if state.done or self._loop is None:
            return
        state.beat_at = at = self._loop.time() + delay
        if at < self._tick_at:
            self._schedule_tick(at)

    async def _beat(self, state: RunningJob) -> None:
        """One heartbeat; interrupt the handler when the job's cancellation is requested."""
        job = state.job
        interval = self._interval
        try:
            beat = await self._client.heartbeat(job.id, job.lease_token, extend_seconds=self._lease_seconds)
        except (Conflict, NotFound) as exc:
            if not state.done:
                log.warning("worker %s: job %s: lease lost (%s)", self._name, job.id, exc.detail)
            return
        except (Unauthorized, Forbidden) as exc:
            self._on_fatal(exc)
            return
        except SdkError as exc:
            if state.done:
                return
            if not is_transient(exc):
                log.error("worker %s: job %s: heartbeat refused: %s", self._name, job.id, exc)
                return
            state.failures += 1
            log.warning("worker %s: job %s: heartbeat failed (%s)", self._name, job.id, exc)
            self._beat_again(state, min(interval, retry_delay_s(state.failures, exc)))
            return
        except Exception:
            log.exception("worker %s: job %s: unexpected error in a heartbeat", self._name, job.id)
            self._beat_again(state, interval)
            return
        state.failures = 0
        if beat.cancel_requested and state.interruptible and not state.done:
            log.info("worker %s: job %s: cancellation requested; stopping the handler", self._name, job.id)
            state.interrupt("cancel_requested")
            return
        self._beat_again(state, interval)
