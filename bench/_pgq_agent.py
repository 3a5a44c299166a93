"""A worker process of the bench for pgqueuer: one `QueueManager` on its own connection.

Run as `python -m bench._pgq_agent '<AgentConfig as JSON>'` with `url` the database's DSN and
`concurrency` the dequeue `batch_size`; `_protocol` describes the exchange. Driven with
pgqueuer's public API only: `Queries` over an `AsyncpgDriver`, an entrypoint, `QueueManager.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

from ._protocol import AgentConfig, AgentReport, agent_main, say, stdin_lines

ENTRYPOINT = "bench_noop"
STOP_TIMEOUT_S = 30.0


class CountingQueries(Queries):
    """`Queries` that count dequeues and status logs, to report the batches pgqueuer really used."""

    def __init__(self, driver: AsyncpgDriver, report: AgentReport) -> None:
        super().__init__(driver)
        self.report = report

    async def dequeue(self, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await super().dequeue(*args, **kwargs)
        r = self.report
        r.lease_calls += 1
        if jobs:
            r.lease_nonempty += 1
            r.leased += len(jobs)
            r.lease_max = max(r.lease_max, len(jobs))
        return jobs

    async def log_jobs(self, *args: Any, **kwargs: Any) -> None:
        await super().log_jobs(*args, **kwargs)
        self.report.ack_calls += 1
        self.report.acked += sum(len(v) for v in (*args, *kwargs.values()) if isinstance(v, list))


async def run(config: AgentConfig) -> AgentReport:
    report = AgentReport(name=config.name)
    latencies = report.latencies_ns
    record = config.mode == "latency"
    conn = await asyncpg.connect(config.url, server_settings={"application_name": config.name})
    qm = QueueManager(CountingQueries(AsyncpgDriver(conn), report))

    @qm.entrypoint(ENTRYPOINT)
    async def handler(job: Job) -> None:
        started = time.time_ns()
        report.handled += 1
        if record and job.payload and job.payload.isdigit():
            latencies.append(started - int(job.payload))

    commands = await stdin_lines()
    say(b"ready")
    try:
        if (await commands.readline()).strip() == b"go":
            task = asyncio.create_task(
                qm.run(batch_size=config.concurrency, dequeue_timeout=timedelta(milliseconds=config.wait_ms))
            )
            stop = asyncio.ensure_future(commands.readline())
            await asyncio.wait({stop, task}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            qm.shutdown.set()
            try:
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
            except TimeoutError:
                report.errors.append("the queue manager did not stop in time")
            except Exception as exc:
                report.errors.append(repr(exc))
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return report


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv, run))
