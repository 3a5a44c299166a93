"""Batched acknowledgements: outcomes go to the gateway many at a time, on the worker's next
lease when one goes out first (`take_for_lease`), else to `POST /v1/workers/ack`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.wire import AckComplete, AckFail, AckResult, LeasedJob

from ._backoff import retry_delay_s
from ._errors import ApiError, Forbidden, InvalidRequest, SdkError, Unauthorized, is_transient
from ._outcome import Outcome
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")

REPORT_ATTEMPTS = 5
MAX_ITEMS = 1000  # the server's limit per list
MAX_BODY_BYTES = 512 * 1024  # well under the server's default 1 MiB body limit
ITEM_OVERHEAD_BYTES = 96


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs more, and this is per job
class _Pending:
    job: LeasedJob
    item: AckComplete | AckFail
    size: int
    at: float  # loop time it was queued


def _size(item: AckComplete | AckFail) -> int:
    if isinstance(item, AckFail):
        return ITEM_OVERHEAD_BYTES + len(item.error.encode())
    raw = item.result
    return ITEM_OVERHEAD_BYTES + (len(raw) if raw is not None else 0)


class AckBatcher:
    """Collects outcomes and sends them in batches: as soon as `batch_size` are waiting, or
    `flush_s` after the oldest one arrived. One batch is in flight at a time; what arrives
    meanwhile forms the next."""

    def __init__(
        self,
        client: WorkerClient,
        *,
        batch_size: int,
        flush_s: float,
        on_fatal: Callable[[ApiError], None],
        name: str,
    ) -> None:
        self._client = client
        self._batch_size = max(1, batch_size)
        self._flush_s = flush_s
        self._on_fatal = on_fatal
        self._name = name
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches_sent = 0
        self.items_sent = 0

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"orchestrator-acks-{self._name}")

    def add(self, job: LeasedJob, outcome: Outcome) -> None:
        item = outcome.ack(job.id, job.lease_token)
        loop = self._loop or asyncio.get_running_loop()
        pending = self._pending
        pending.append(_Pending(job, item, _size(item), loop.time()))
        if len(pending) == 1:
            self._wakeup.set()
        if len(pending) >= self._batch_size:
            self._full.set()

    async def close(self) -> None:
        """Send everything still waiting, then stop."""
        self._closing = True
        self._wakeup.set()
        self._full.set()
        if self._task is not None:
            await asyncio.wait({self._task})

    async def finish(self, timeout_s: float) -> bool:
        """`close()` within `timeout_s`, else `abort()`; True when everything was sent."""
        try:
            await asyncio.wait_for(self.close(), timeout_s)
        except TimeoutError:
            await self.abort()
            return False
        return True

    async def abort(self) -> None:
        """Stop without sending: the jobs still waiting run again once their leases expire."""
        if self._pending:
            log.warning(
                "worker %s: %d outcomes not reported; those jobs run again once their leases expire",
                self._name,
                len(self._pending),
            )
            self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            wait = self._pending[0].at + self._flush_s - loop.time()
            if len(self._pending) < self._batch_size and not self._closing and wait > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            # A lease the runner is about to send carries them in the same request: let it go first.
            await asyncio.sleep(0)
            batch = self._take()
            if not batch:  # a lease took them meanwhile
                continue
            try:
                await self._send(batch)
            except Exception:
                log.exception("worker %s: unexpected error while reporting outcomes", self._name)

    def take_for_lease(self) -> list[_Pending]:
        """The outcomes waiting, for a lease to carry; give them back with `requeue` if it fails."""
        return self._take() if self._pending and not self._closing else []

    def requeue(self, batch: list[_Pending]) -> None:
        """Outcomes a lease carried but may not have delivered: sent again (a repeat is harmless)."""
        if batch:
            self._pending[:0] = batch
            self._wakeup.set()
            if len(self._pending) >= self._batch_size:
                self._full.set()

    def delivered(self, batch: Sequence[_Pending], results: Sequence[AckResult]) -> None:
        """A lease delivered `batch`; `results` are the gateway's answers for them."""
        self.batches_sent += 1
        self.items_sent += len(batch)
        self._log_refusals(results)

    def _take(self) -> list[_Pending]:
        size = 0
        n = 0
        for p in self._pending:
            if n and (n >= MAX_ITEMS or size + p.size > MAX_BODY_BYTES):
                break
            size += p.size
            n += 1
        batch, self._pending = self._pending[:n], self._pending[n:]
        if len(self._pending) < self._batch_size:
            self._full.clear()
        return batch

    async def _send(self, batch: Sequence[_Pending]) -> None:
        """Complete and fail are safe to repeat, so a transient error resends the whole batch."""
        completes = [p.item for p in batch if isinstance(p.item, AckComplete)]
        fails = [p.item for p in batch if isinstance(p.item, AckFail)]
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                resp = await self._client.ack(complete=completes, fail=fails)
            except (Unauthorized, Forbidden) as exc:
                self._on_fatal(exc)
                return
            except InvalidRequest as exc:
                if len(batch) > 1:
                    # One bad item must not sink the others: send each on its own.
                    log.warning("worker %s: a batch of %d outcomes was refused (%s)", self._name, len(batch), exc)
                    for p in batch:
                        await self._send([p])
                    return
                log.error("worker %s: job %s: outcome refused: %s", self._name, batch[0].job.id, exc)
                return
            except SdkError as exc:
                if not is_transient(exc):
                    log.error("worker %s: %d outcomes refused: %s", self._name, len(batch), exc)
                    return
                if attempt == REPORT_ATTEMPTS:
                    log.error(
                        "worker %s: could not report %d outcomes (%s); those jobs run again once their leases expire",
                        self._name,
                        len(batch),
                        exc,
                    )
                    return
                await asyncio.sleep(retry_delay_s(attempt, exc))
                continue
            self.batches_sent += 1
            self.items_sent += len(batch)
            self._log_refusals(resp.results)
            return

    def _log_refusals(self, results: Sequence[AckResult]) -> None:
        for r in results:
            if r.status == 409:
                log.warning("worker %s: job %s: lease lost, outcome refused", self._name, r.id)
            elif r.status == 404:
                log.warning("worker %s: job %s: not found, outcome dropped", self._name, r.id)
