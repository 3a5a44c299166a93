"""The SDK as typed code uses it: mypy --strict checks this file, and the tests run it.

python -m examples.typed_usage URL TENANT_API_KEY
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypedDict, assert_type

from core import JobState
from core.wire import Consumer, EventPage, QueueState, RetryPolicyOut
from sdk import (
    AdminClient,
    Cancel,
    Job,
    JobSubmit,
    LeasedJob,
    ProducerClient,
    Retry,
    Schedule,
    Snooze,
    SyncProducerClient,
    Task,
    Tasks,
    Tenant,
    TenantCreated,
    WaitTimeout,
    Webhook,
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


# --- tasks: a typed function is its job kind's payload schema -----------------------------

tasks = Tasks()


@tasks.task("thumbnail", queue="images", max_attempts=3)
async def thumbnail(url: str, width: int = 128) -> Resized:
    """Submitted with typed arguments, checked before sending; the worker decodes them back."""
    return {"width": width, "height": width * 3 // 4}


def check_tasks() -> dict[str, Any]:
    """What a task gives without a server: the payload of a call, checked against the signature."""
    assert_type(tasks["thumbnail"], Task[Any, Any])
    return assert_type(thumbnail.payload("https://example.com/a.png", width=32), dict[str, Any])


async def run_tasks(url: str, api_key: str) -> tuple[JobState, list[Job]]:
    """Submit tasks, run them with the registry's handlers, and wait (with a timeout) for them."""
    async with (
        ProducerClient(url, api_key=api_key) as producer,
        WorkerClient(url, worker_id="typed-tasks", api_key=api_key, queues=("images",)) as worker,
    ):
        first = assert_type(await thumbnail.submit(producer, "https://example.com/a.png", width=64), Job)
        once = thumbnail.with_options(idempotency_key="thumb-b", priority=5)
        batch = await producer.submit_many([once.job("https://example.com/b.png")])
        try:
            await producer.wait(first.id, timeout_s=0.05)  # nobody serves "images" yet
            raise AssertionError("the job cannot have finished")
        except WaitTimeout as exc:
            before = assert_type(exc.job, Job).state  # the job as it last stood
        runner = WorkerRunner(worker, handlers=tasks.handlers, concurrency=2, shutdown_timeout_s=5)
        task = asyncio.create_task(runner.run())
        try:
            return before, [await producer.wait(job.id, timeout_s=30) for job in [first, *batch]]
        finally:
            runner.stop()
            await task


# --- the tenant's other resources, and the operator ---------------------------------------


async def manage(url: str, api_key: str) -> list[str]:
    """A tenant's schedules, retry policies, queues and consumers, through its producer."""
    async with ProducerClient(url, api_key=api_key) as producer:
        schedule = assert_type(
            await producer.schedules.create("digest", "0 7 * * 1-5", timezone="Europe/Paris", kind="digest"),
            Schedule,
        )
        assert_type(await producer.schedules.update(schedule.name, max_attempts=None), Schedule)
        assert_type(await producer.schedules.list(), list[Schedule])
        assert_type(await producer.retry_policies.set("images", max_attempts=5), RetryPolicyOut)
        assert_type(await producer.queues.pause("images"), QueueState)
        paused = assert_type(await producer.queues.paused(), list[str])
        await producer.queues.resume("images")
        assert_type(await producer.consumers.create("audit", "latest", exist_ok=True), Consumer)
        page = assert_type(await producer.consumers.read("audit", wait_ms=0), EventPage)
        await producer.consumers.ack("audit", page.next)
        assert_type(await producer.webhooks.list(), list[Webhook])
        await producer.schedules.delete(schedule.name)
        return paused


async def operate(url: str, admin_token: str, tenant_id: str) -> Tenant:
    """The operator's calls: a tenant, a key rotation, a paused queue, reaping."""
    async with AdminClient(url, admin_token=admin_token) as admin:
        created = assert_type(await admin.create_tenant(tenant_id, weight=2), TenantCreated)
        rotated = assert_type(await admin.create_key(tenant_id), str)
        await admin.revoke_key(created.api_key)  # the first key, now that there is another
        assert_type(await admin.pause_queue(tenant_id, "images"), QueueState)
        assert_type(await admin.reap(), int)
        assert_type(await admin.replay(tenant_id), int)
        assert rotated != created.api_key
        return assert_type(await admin.update_tenant(tenant_id, max_inflight=10), Tenant)


def submit_from_a_script(url: str, api_key: str) -> JobState:
    """The blocking client, for code without an event loop."""
    with SyncProducerClient(url, api_key=api_key) as producer:
        job = producer.submit({"width": 1}, kind="resize", delay_ms=60_000)
        assert_type(thumbnail.submit(producer, "https://example.com/c.png"), Job)  # blocking
        assert_type(producer.schedules.list(), list[Schedule])
        return producer.cancel(job.id).state


if __name__ == "__main__":
    for job in asyncio.run(main(sys.argv[1], sys.argv[2])):
        print(job.kind, job.state, job.result if job.result is not None else job.last_error)
    print("a delayed job, then cancelled:", submit_from_a_script(sys.argv[1], sys.argv[2]))
