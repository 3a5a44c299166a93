"""The SDK against a real gateway: producer, worker client, and the runner's life cycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core import JobState
from core.wire import HeartbeatResponse
from sdk import (
    AckComplete,
    Cancel,
    Conflict,
    InvalidRequest,
    Job,
    JobSubmit,
    LeasedJob,
    NotFound,
    ProducerClient,
    Retry,
    TransportError,
    Unauthorized,
    WorkerClient,
    WorkerRunner,
)

from .support import Api, InProcessGateway, eventually, free_port


@pytest.fixture
async def tenant_a(api: Api) -> str:
    return await api.tenant("tenant-a")


@pytest.fixture
async def producer(api: Api, tenant_a: str) -> AsyncIterator[ProducerClient]:
    async with ProducerClient(api.url, api_key=tenant_a) as p:
        yield p


def parked(gateway: InProcessGateway) -> int:
    """Lease requests waiting in the gateway."""
    return len(gateway.runtime.notifier.lease_waiters)


async def is_parked(gateway: InProcessGateway) -> bool:
    return parked(gateway) > 0


async def none_parked(gateway: InProcessGateway) -> bool:
    return parked(gateway) == 0


async def all_in(producer: ProducerClient, jobs: list[Job], *states: JobState) -> list[Job] | None:
    current = [await producer.get(j.id) for j in jobs]
    return current if all(j.state in states for j in current) else None


@pytest.mark.timeout(60)
async def test_runner_runs_jobs_and_stops_promptly_while_parked(
    api: Api, gateway: InProcessGateway, tenant_a: str, producer: ProducerClient
) -> None:
    submitted = [await producer.submit({"n": n}) for n in range(20)]

    async def handler(payload: dict[str, Any]) -> dict[str, Any]:
        return {"square": payload["n"] ** 2}

    client = WorkerClient(api.url, worker_id="w1", tenant_id="tenant-a", api_key=tenant_a)
    runner = WorkerRunner(client, handler)
    task = asyncio.create_task(runner.run())
    try:
        done = await eventually(lambda: all_in(producer, submitted, JobState.SUCCEEDED), timeout=30)
        assert [j.result for j in done] == [{"square": n**2} for n in range(20)]
        assert all(j.attempts == 1 for j in done)

        await eventually(lambda: is_parked(gateway))
        t0 = time.monotonic()
        runner.stop()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 2
        # The abandoned long-poll left the gateway too.
        await eventually(lambda: none_parked(gateway))
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
        await client.close()


@pytest.mark.timeout(60)
async def test_stop_lets_running_jobs_finish(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    jobs = [await producer.submit({"n": n}) for n in range(3)]
    started = 0
    release = asyncio.Event()

    async def all_started() -> bool:
        return started == 3

    async def handler(payload: dict[str, Any]) -> int:
        nonlocal started
        started += 1
        await release.wait()
        return int(payload["n"])

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler, concurrency=3)
        task = asyncio.create_task(runner.run())
        await eventually(all_started)
        runner.stop()
        await asyncio.sleep(0.05)  # stop() must not abandon the jobs that run
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, 10)
    done = [await producer.get(j.id) for j in jobs]
    assert [(j.state, j.result) for j in done] == [(JobState.SUCCEEDED, n) for n in range(3)]


@pytest.mark.timeout(60)
async def test_retry_then_success_with_a_sync_handler(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({"x": 1}, max_attempts=3)
    calls = 0
    threads: set[int] = set()

    def handler(payload: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        threads.add(threading.get_ident())
        if calls == 1:
            raise Retry(delay_ms=50)
        return "ok"

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler, wait_ms=1000)
        task = asyncio.create_task(runner.run())
        try:
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 2
    assert done.result == "ok"
    assert calls == 2
    assert threading.get_ident() not in threads  # sync handlers run off the event loop


@pytest.mark.timeout(60)
async def test_cancel_makes_the_job_dead(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({}, max_attempts=5)

    async def handler(payload: dict[str, Any]) -> None:
        raise Cancel("the input is unusable")

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler)
        task = asyncio.create_task(runner.run())
        try:
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert done.state is JobState.DEAD
    assert done.attempts == 1
    assert done.last_error == "the input is unusable"


@pytest.mark.timeout(60)
async def test_an_exception_fails_with_its_traceback(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({}, max_attempts=1)

    async def handler(payload: dict[str, Any]) -> None:
        raise ValueError("boom")

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler)
        task = asyncio.create_task(runner.run())
        try:
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert done.state is JobState.DEAD
    assert done.last_error is not None
    assert done.last_error.startswith("Traceback (most recent call last)")
    assert "ValueError: boom" in done.last_error


@pytest.mark.timeout(60)
async def test_requested_cancellation_stops_an_async_handler(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({})
    started, interrupted = asyncio.Event(), asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.set()
            raise

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler, lease_seconds=1)
        task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(started.wait(), 10)
            marked = await producer.cancel(job.id)
            assert marked.state is JobState.RUNNING and marked.cancel_requested
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert done.state is JobState.CANCELLED
    assert interrupted.is_set()


@pytest.mark.timeout(60)
async def test_producer_errors(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    with pytest.raises(NotFound) as nf:
        await producer.get("9876543210")
    assert nf.value.status == 404
    for odd in ("1?wait_ms=5", "ü x"):  # escaped into the path, not the query
        with pytest.raises(NotFound):
            await producer.get(odd)

    key_id = tenant_a.split(".", 1)[0]
    for bad in ("tk_nosuchkey.secret", f"{key_id}.wrong-secret"):
        async with ProducerClient(api.url, api_key=bad) as p:
            with pytest.raises(Unauthorized) as ua:
                await p.submit({})
            assert ua.value.status == 401
            assert ua.value.detail

    with pytest.raises(InvalidRequest) as ir:
        await producer.submit({}, priority=5000)
    assert ir.value.status == 422
    assert ir.value.field == "priority"

    async with ProducerClient(f"http://127.0.0.1:{free_port()}", api_key=tenant_a) as p:
        with pytest.raises(TransportError):
            await p.get("1")


@pytest.mark.timeout(60)
async def test_query_strings_are_signed_as_sent(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    created = await producer.submit_many(
        [JobSubmit(payload={"n": n}, queue="q:a.b-c", delay_ms=60_000 if n % 2 else None) for n in range(5)]
    )
    assert [j.payload["n"] for j in created] == list(range(5))

    page = await producer.list(queue="q:a.b-c", state="scheduled", limit=1)
    seen = [j.id for j in page.jobs]
    while page.next is not None:
        page = await producer.list(queue="q:a.b-c", state="scheduled", limit=1, after=page.next)
        seen += [j.id for j in page.jobs]
    assert seen == [created[3].id, created[1].id]  # newest first

    with pytest.raises(InvalidRequest):
        await producer.list(state="no such state")
    # wait_ms on a job that does not finish: answered with its state once the wait runs out.
    t0 = time.monotonic()
    job = await producer.get(created[1].id, wait_ms=200)
    assert job.state is JobState.SCHEDULED
    assert time.monotonic() - t0 >= 0.2


@pytest.mark.timeout(60)
async def test_worker_client_calls(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    jobs = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(2)])
    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        leased = await client.lease(max_jobs=5, wait_ms=0, lease_seconds=10)
        assert sorted(j.id for j in leased) == sorted(j.id for j in jobs)
        first, second = sorted(leased, key=lambda j: j.payload["n"])

        beat = await client.heartbeat(first.id, first.lease_token, extend_seconds=20)
        assert beat.cancel_requested is False
        with pytest.raises(Conflict):
            await client.heartbeat(first.id, first.lease_token + 1)
        with pytest.raises(Conflict):
            await client.complete(first.id, first.lease_token + 1, {"late": True})

        done = await client.complete(first.id, first.lease_token, {"n": 0})
        assert done.state is JobState.SUCCEEDED
        assert await client.complete(first.id, first.lease_token, {"n": 0}) == done  # a repeat changes nothing

        failed = await client.fail(second.id, second.lease_token, "nope", retryable=False)
        assert failed.state is JobState.DEAD
        assert failed.last_error == "nope"

        assert await client.lease(wait_ms=0) == []


@pytest.mark.timeout(60)
async def test_shared_worker_key_leases_every_tenant(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    key_b = await api.tenant("tenant-b")
    async with ProducerClient(api.url, api_key=key_b) as producer_b:
        a = await producer.submit({"from": "a"})
        b = await producer_b.submit({"from": "b"})
        async with WorkerClient(api.url, worker_id="shared-1", api_key=await api.worker_key()) as client:
            leased: dict[str, Any] = {}

            async def lease_both() -> bool:
                for job in await client.lease(max_jobs=2, wait_ms=1000):
                    leased[job.id] = job
                return len(leased) == 2

            await eventually(lease_both, timeout=20)
            assert {j.tenant_id for j in leased.values()} == {"tenant-a", "tenant-b"}
            acked = await client.ack(
                complete=[
                    AckComplete(id=j.id, lease_token=j.lease_token, result=j.payload["from"]) for j in leased.values()
                ]
            )
            assert sorted((r.id, r.status, r.state) for r in acked.results) == sorted(
                (j.id, 200, JobState.SUCCEEDED) for j in leased.values()
            )
        assert (await producer.get(a.id)).result == "a"
        assert (await producer_b.get(b.id)).result == "b"
        with pytest.raises(NotFound):  # one tenant never sees another's job
            await producer.get(b.id)


@pytest.mark.timeout(60)
async def test_runner_raises_on_a_bad_key(api: Api, tenant_a: str) -> None:
    async def handler(payload: dict[str, Any]) -> None:
        return None

    async with WorkerClient(api.url, worker_id="w1", api_key="tk_nosuchkey.secret") as client:
        with pytest.raises(Unauthorized):
            await asyncio.wait_for(WorkerRunner(client, handler).run(), 10)


class CountingClient(WorkerClient):
    leases = 0
    heartbeats = 0

    async def lease(self, *args: Any, **kwargs: Any) -> list[LeasedJob]:
        self.leases += 1
        return await super().lease(*args, **kwargs)

    async def heartbeat(self, *args: Any, **kwargs: Any) -> HeartbeatResponse:
        beat = await super().heartbeat(*args, **kwargs)
        self.heartbeats += 1
        return beat


@pytest.mark.timeout(60)
async def test_heartbeats_keep_a_long_job_leased(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({})
    release = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> str:
        await release.wait()
        return "done"

    async with CountingClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler, lease_seconds=1)
        task = asyncio.create_task(runner.run())
        try:

            async def outlived_lease() -> bool:
                return client.heartbeats >= 5  # > 1.6 s: the first 1 s lease alone would have expired

            await eventually(outlived_lease)
            r = await api.admin("POST", "/v1/admin/reap")
            assert r.status == 200, r.body
            release.set()
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            release.set()
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert (done.state, done.attempts, done.result) == (JobState.SUCCEEDED, 1, "done")


@pytest.mark.timeout(60)
async def test_runner_retries_an_unreachable_gateway_and_still_stops(tenant_a: str) -> None:
    async def handler(payload: dict[str, Any]) -> None:
        return None

    async with CountingClient(f"http://127.0.0.1:{free_port()}", worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler)
        task = asyncio.create_task(runner.run())

        async def retried() -> bool:
            assert not task.done(), task
            return client.leases >= 3

        await eventually(retried)
        t0 = time.monotonic()
        runner.stop()  # most likely in a backoff sleep now
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 1


@pytest.mark.timeout(60)
async def test_the_readme_example_runs(api: Api, tenant_a: str, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code, last_line = code.rstrip().rsplit("\n", 1)
    assert last_line.startswith("asyncio.run(main(")  # the README's entry point, replaced here
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    await asyncio.wait_for(namespace["main"](api.url, tenant_a), 30)
    assert capsys.readouterr().out == "succeeded {'greeting': 'hello world'}\n"
