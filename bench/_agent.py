"""A worker process of the bench: SDK `WorkerRunner`s over a shared worker key.

Run as `python -m bench._agent '<AgentConfig as JSON>'`; `_protocol` describes the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from core.wire import AckResponse, HeartbeatResponse, Job, LeaseResponse
from sdk import WorkerClient, WorkerRunner

from ._protocol import AgentConfig, AgentReport, agent_main, say, stdin_lines

STOP_TIMEOUT_S = 30.0


def _items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return sum(len(v) for v in (*args, *kwargs.values()) if isinstance(v, list | tuple))


class CountingClient(WorkerClient):
    """A `WorkerClient` that counts its calls, to report the lease and acknowledgement batches
    the runner really used."""

    def __init__(self, report: AgentReport, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report = report

    async def lease_and_ack(self, *args: Any, **kwargs: Any) -> LeaseResponse:
        # The runner's one lease call (`lease` goes through it too); it may carry outcomes.
        answer = await super().lease_and_ack(*args, **kwargs)
        r = self.report
        r.lease_calls += 1
        jobs = answer.jobs
        if jobs:
            r.lease_nonempty += 1
            r.leased += len(jobs)
            r.lease_max = max(r.lease_max, len(jobs))
        carried = len(kwargs.get("complete", ())) + len(kwargs.get("fail", ()))
        if carried:
            r.acks_on_lease += 1
            r.acked += carried
        return answer

    async def complete(self, *args: Any, **kwargs: Any) -> Job:
        job = await super().complete(*args, **kwargs)
        self.report.complete_calls += 1
        return job

    async def fail(self, *args: Any, **kwargs: Any) -> Job:
        job = await super().fail(*args, **kwargs)
        self.report.fail_calls += 1
        return job

    async def ack(self, *args: Any, **kwargs: Any) -> AckResponse:
        resp = await super().ack(*args, **kwargs)
        self.report.ack_calls += 1
        self.report.acked += _items(args, kwargs)
        return resp

    async def heartbeat(self, *args: Any, **kwargs: Any) -> HeartbeatResponse:
        beat = await super().heartbeat(*args, **kwargs)
        self.report.heartbeat_calls += 1
        return beat


Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def _handler(mode: str, report: AgentReport) -> Handler:
    latencies = report.latencies_ns

    async def record(payload: dict[str, Any]) -> None:
        started = time.time_ns()
        report.handled += 1
        t = payload.get("t")
        if isinstance(t, int):
            latencies.append(started - t)
            report.starts_ns.append(started)

    async def noop(payload: dict[str, Any]) -> None:
        report.handled += 1

    if mode == "latency":
        return record
    if mode == "drain":
        return noop
    raise ValueError(f"unknown agent mode {mode!r}")


async def run(config: AgentConfig) -> AgentReport:
    report = AgentReport(name=config.name)
    handler = _handler(config.mode, report)
    clients = [
        CountingClient(report, config.url, worker_id=f"{config.name}-{i}", api_key=config.api_key, queues=config.queues)
        for i in range(config.runners)
    ]
    runners = [WorkerRunner(c, handler, concurrency=config.concurrency, wait_ms=config.wait_ms) for c in clients]
    commands = await stdin_lines()
    say(b"ready")
    tasks: list[asyncio.Task[None]] = []
    try:
        if (await commands.readline()).strip() == b"go":
            tasks = [asyncio.create_task(r.run()) for r in runners]
            stop = asyncio.ensure_future(commands.readline())
            done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception() is not None:
                    report.errors.append(repr(t.exception()))
            stop.cancel()
        for r in runners:
            r.stop()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for t in pending:
                t.cancel()
                report.errors.append("a runner did not stop in time")
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    report.errors.append(repr(t.exception()))
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
    return report


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv, run))
