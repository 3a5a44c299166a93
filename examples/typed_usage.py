"""The SDK as typed code uses it: mypy --strict checks this file, and the tests run it.

python -m examples.typed_usage URL TENANT_API_KEY
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypedDict

from core import JobState
from sdk import (
    Cancel,
    Job,
    JobSubmit,
    LeasedJob,
    ProducerClient,
    Retry,
    Snooze,
    SyncProducerClient,
    WorkerClient,
    WorkerRunner,
    current_job,
)
from sdk.testing import Outcome, run_handler


class Resized(TypedDict):
    width: int
    height: int


async def resize(payload: dict[str, Any]) -> Resized:
    """An async handler: its return value (JSON-encodable) is the job's result."""
    if payload.get("width", 0) <= 0:
        raise Cancel("width must be positive")  # never retried
    return {"width": payload["width"], "height": payload["width"] // 2}


def render(payload: dict[str, Any]) -> str:
    """A plain function: it runs in the runner's thread pool, so blocking here is fine."""
    job: Job = current_job()
    if job.attempts == 1 and payload.get("flaky"):
        raise Retry(delay_ms=10, reason="the renderer was busy")
    if payload.get("not_before_second_look") and job.attempts < 2:
        raise Snooze(10)  # look again shortly; this attempt does not count
    return f"page {payload['page']} (attempt {job.attempts})"


def check_handlers() -> list[Outcome]:
    """Handlers tested without a server, through the runner's own code path."""
    return [run_handler(resize, {"width": 8}), run_handler(render, {"page": 1, "flaky": True})]


async def main(url: str, api_key: str) -> list[Job]:
    """Submit a few jobs, serve them with a runner, return them finished."""
    async with (
        ProducerClient(url, api_key=api_key) as producer,
        WorkerClient(url, worker_id="typed-usage", api_key=api_key) as worker,
    ):
        submitted: list[Job] = await producer.submit_many(
            [
                JobSubmit(payload={"width": 640}, kind="resize"),
                JobSubmit(payload={"width": 0}, kind="resize"),
                JobSubmit(payload={"page": 3, "flaky": True}, kind="render", max_attempts=3),
            ]
        )
        runner = WorkerRunner(worker, concurrency=4, shutdown_timeout_s=5)
        runner.register("resize", resize)

        @runner.handler("render")
        def render_page(payload: dict[str, Any]) -> str:
            return render(payload)

        task = asyncio.create_task(runner.run())
        try:
            finished = [await producer.wait(job.id, timeout_s=30) for job in submitted]
        finally:
            runner.stop()
            await task
        peek: list[LeasedJob] = await worker.lease(wait_ms=0)  # nothing left to lease
        assert peek == []
    return finished


def submit_from_a_script(url: str, api_key: str) -> JobState:
    """The blocking client, for code without an event loop."""
    with SyncProducerClient(url, api_key=api_key) as producer:
        job = producer.submit({"width": 1}, kind="resize", delay_ms=60_000)
        return producer.cancel(job.id).state


if __name__ == "__main__":
    for job in asyncio.run(main(sys.argv[1], sys.argv[2])):
        print(job.kind, job.state, job.result if job.result is not None else job.last_error)
    print("a delayed job, then cancelled:", submit_from_a_script(sys.argv[1], sys.argv[2]))
