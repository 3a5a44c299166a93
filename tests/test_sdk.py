"""The SDK against a real gateway: producer, worker client, and the runner's life cycle."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core import JobState
from core.signing import webhook_signature
from core.wire import AckResponse, HeartbeatResponse, LeaseResponse
from sdk import (
    AckComplete,
    AckFail,
    ApiError,
    Cancel,
    Conflict,
    Handler,
    InvalidRequest,
    Job,
    JobSubmit,
    NotFound,
    ProducerClient,
    Retry,
    Snooze,
    SyncProducerClient,
    TransportError,
    Unauthorized,
    WaitTimeout,
    WorkerClient,
    WorkerRunner,
    current_job,
    verify_webhook,
)
from sdk._acks import AckBatcher
from sdk._http import body_of
from sdk._outcome import completed

from .support import Api, InProcessGateway, eventually, fetch, free_port


@pytest.fixture
async def tenant_a(api: Api) -> str:
    return await api.tenant("tenant-a")


@pytest.fixture
async def producer(api: Api, tenant_a: str) -> AsyncIterator[ProducerClient]:
    async with ProducerClient(api.url, api_key=tenant_a) as p:
        yield p


async def run_until_done(
    api: Api, key: str, producer: ProducerClient, job_id: str, handler: Any, **runner_args: Any
) -> Job:
    """Run a runner on `handler` until the job has ended, then stop it."""
    async with WorkerClient(api.url, worker_id="w1", api_key=key) as client:
        runner = WorkerRunner(client, handler, **runner_args)
        task = asyncio.create_task(runner.run())
        try:
            return await producer.wait(job_id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)


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

    done = await run_until_done(api, tenant_a, producer, job.id, handler, wait_ms=1000)
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

    done = await run_until_done(api, tenant_a, producer, job.id, handler)
    assert done.state is JobState.DEAD
    assert done.attempts == 1
    assert done.last_error == "the input is unusable"


@pytest.mark.timeout(60)
async def test_an_exception_fails_with_its_traceback(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({}, max_attempts=1)

    async def handler(payload: dict[str, Any]) -> None:
        raise ValueError("boom")

    done = await run_until_done(api, tenant_a, producer, job.id, handler)
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

    async def lease_and_ack(self, *args: Any, **kwargs: Any) -> LeaseResponse:
        self.leases += 1
        return await super().lease_and_ack(*args, **kwargs)

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


class BeatRecordingClient(WorkerClient):
    """Records the job of every heartbeat. The first `failures` heartbeats fail as if the gateway
    were unreachable; those of the jobs in `lost` are refused as if their leases were lost."""

    def __init__(self, *args: Any, failures: int = 0, lost: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.lost = set(lost)
        self.beats: list[str] = []
        self.failed: list[str] = []
        self.refused: list[str] = []

    async def heartbeat(self, job_id: str, lease_token: int, extend_seconds: int | None = None) -> HeartbeatResponse:
        if self.failures > 0:
            self.failures -= 1
            self.failed.append(job_id)
            raise TransportError("simulated outage")
        if job_id in self.lost:
            self.refused.append(job_id)
            raise Conflict(409, "simulated: the lease token is stale")
        beat = await super().heartbeat(job_id, lease_token, extend_seconds)
        self.beats.append(job_id)
        return beat


@pytest.mark.timeout(60)
async def test_only_jobs_that_outlive_a_third_of_their_lease_are_heartbeated(
    api: Api, tenant_a: str, producer: ProducerClient
) -> None:
    slow = await producer.submit({"slow": True})
    quick = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(10)])
    release = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> str:
        if payload.get("slow"):
            await release.wait()
        return "done"

    async with BeatRecordingClient(api.url, worker_id="w1", api_key=tenant_a, failures=2) as client:
        # A 2 s lease: heartbeats every 0.67 s leave room for the two failed ones and their
        # backoff on a busy machine, where a 1 s lease could run out between two beats.
        runner = WorkerRunner(client, handler, concurrency=20, lease_seconds=2)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(lambda: all_in(producer, quick, JobState.SUCCEEDED))

            async def outlived_lease() -> bool:
                assert not task.done(), task
                # Two failed heartbeats were retried with backoff; five good ones span > 2.6 s,
                # longer than the 2 s lease the job was leased with.
                return len(client.beats) >= 5

            await eventually(outlived_lease)
            r = await api.admin("POST", "/v1/admin/reap")
            assert r.status == 200, r.body
            assert (await producer.get(slow.id)).state is JobState.RUNNING  # its lease was extended
            release.set()
            done = await producer.wait(slow.id, timeout_s=20)
        finally:
            release.set()
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert (done.state, done.attempts, done.result) == (JobState.SUCCEEDED, 1, "done")
    assert set(client.failed) == set(client.beats) == {slow.id}  # quick jobs cost no heartbeat


@pytest.mark.timeout(60)
async def test_a_lost_lease_stops_the_heartbeats_of_that_job(
    api: Api, tenant_a: str, producer: ProducerClient, caplog: pytest.LogCaptureFixture
) -> None:
    lost, kept = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(2)])
    release = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        await release.wait()

    async with BeatRecordingClient(api.url, worker_id="w1", api_key=tenant_a, lost=[lost.id]) as client:
        runner = WorkerRunner(client, handler, concurrency=2, lease_seconds=1)
        task = asyncio.create_task(runner.run())
        try:
            with caplog.at_level(logging.WARNING, logger="orchestrator.sdk"):

                async def beaten_on() -> bool:
                    assert not task.done(), task
                    # The other job's heartbeats went on for more than a lease meanwhile.
                    return client.beats.count(kept.id) >= 4

                await eventually(beaten_on)
            assert client.refused == [lost.id]  # asked once, never again
            assert f"job {lost.id}: lease lost" in caplog.text
            assert runner.running == 2  # the handler still runs
            release.set()
            done = await producer.wait(kept.id, timeout_s=20)
        finally:
            release.set()
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 1)


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


# --- dispatch, snooze, batched acks, shutdown -----------------------------------------------


async def run_until(runner: WorkerRunner, condition: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:
    """Run `runner` until `condition` holds, then stop it and wait for `run()` to return."""
    task = asyncio.create_task(runner.run())
    try:

        async def check() -> Any:
            if task.done():
                task.result()
                raise AssertionError("the runner stopped early")
            return await condition()

        return await eventually(check, timeout=timeout)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.timeout(60)
async def test_snooze_runs_again_without_counting_an_attempt(
    api: Api, tenant_a: str, producer: ProducerClient, database_url: str
) -> None:
    job = await producer.submit({}, max_attempts=1)
    calls = 0

    async def handler(payload: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Snooze(20, reason=f"not yet ({calls})")
        return "ok"

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        done = await run_until(WorkerRunner(client, handler), lambda: all_in(producer, [job], JobState.SUCCEEDED))
    assert (done[0].attempts, done[0].result, calls) == (1, "ok", 3)
    events = await fetch(database_url, "SELECT type, data FROM events WHERE job_id = $1 ORDER BY id", int(job.id))
    snoozes = [e["data"] for e in events if e["type"] == "job.retry_scheduled"]
    assert [(s["reason"], s["error"], s["attempt"]) for s in snoozes] == [
        ("snoozed", "not yet (1)", 0),
        ("snoozed", "not yet (2)", 0),
    ]


@pytest.mark.timeout(60)
async def test_snooze_through_the_worker_client(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    first, second = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(2)])
    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        leased = {j.id: j for j in await client.lease(max_jobs=2, wait_ms=0)}
        assert leased[first.id].attempts == 1
        snoozed = await client.fail(first.id, leased[first.id].lease_token, "later", retry_in_ms=60_000, snooze=True)
        assert (snoozed.state, snoozed.attempts, snoozed.last_error) == (JobState.SCHEDULED, 0, "later")
        assert snoozed.run_at > snoozed.created_at

        await producer.cancel(second.id)  # running: marked for cancellation, which wins over a snooze
        ended = await client.fail(second.id, leased[second.id].lease_token, "later", retry_in_ms=0, snooze=True)
        assert ended.state is JobState.CANCELLED


@pytest.mark.timeout(60)
async def test_jobs_are_dispatched_by_kind(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    jobs = await producer.submit_many(
        [JobSubmit(payload={"n": n}, kind=kind, max_attempts=1) for n, kind in enumerate(["", "a", "b", "other"])]
    )

    async def default(payload: dict[str, Any]) -> str:
        return f"default {current_job().kind!r}"

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, default, concurrency=4)

        @runner.handler("a")
        async def handle_a(payload: dict[str, Any]) -> str:
            return f"a {payload['n']}"

        def handle_b(payload: dict[str, Any]) -> str:
            return f"b {payload['n']} attempt {current_job().attempts}"  # a sync handler sees its job too

        assert runner.register("b", handle_b) is handle_b
        done = await run_until(runner, lambda: all_in(producer, jobs, JobState.SUCCEEDED))
    assert [j.result for j in done] == ["default ''", "a 1", "b 2 attempt 1", "default 'other'"]


@pytest.mark.timeout(60)
async def test_the_empty_kind_is_the_default_handler(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    jobs = await producer.submit_many([JobSubmit(payload={}, kind=kind, max_attempts=1) for kind in ["", "a", "other"]])

    def named(name: str) -> Handler:
        async def handler(payload: dict[str, Any]) -> str:
            return f"{name} {current_job().kind!r}"

        return handler

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handlers={"": named("empty"), "a": named("a")}, concurrency=3)
        done = await run_until(runner, lambda: all_in(producer, jobs, JobState.SUCCEEDED))
    assert [j.result for j in done] == ["empty ''", "a 'a'", "empty 'other'"]

    # Both given: `handler` is the default, the "" entry serves the empty kind only.
    again = await producer.submit_many([JobSubmit(payload={}, kind=kind, max_attempts=1) for kind in ["", "other"]])
    async with WorkerClient(api.url, worker_id="w2", api_key=tenant_a) as client:
        runner = WorkerRunner(client, named("default"), handlers={"": named("empty")}, concurrency=2)
        done = await run_until(runner, lambda: all_in(producer, again, JobState.SUCCEEDED))
    assert [j.result for j in done] == ["empty ''", "default 'other'"]


@pytest.mark.timeout(60)
async def test_a_kind_without_a_handler_fails_as_retryable(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    job = await producer.submit({}, kind="unknown", max_attempts=1)
    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handlers={"known": lambda payload: None})
        done = await run_until(runner, lambda: all_in(producer, [job], JobState.DEAD))
    assert done[0].last_error == "no handler for job kind 'unknown'"


class AckCountingClient(WorkerClient):
    """Counts outcome calls, and fails the first `ack_failures` acks as if the gateway were down."""

    def __init__(self, *args: Any, ack_failures: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ack_sizes: list[int] = []
        self.carried: list[int] = []  # outcomes that went with a lease
        self.single_calls = 0
        self.ack_failures = ack_failures

    async def lease_and_ack(self, *args: Any, **kwargs: Any) -> LeaseResponse:
        answer = await super().lease_and_ack(*args, **kwargs)
        n = len(kwargs.get("complete", ())) + len(kwargs.get("fail", ()))
        if n:
            self.carried.append(n)
        return answer

    async def ack(self, complete: Sequence[AckComplete] = (), fail: Sequence[AckFail] = ()) -> AckResponse:
        if self.ack_failures:
            self.ack_failures -= 1
            raise TransportError("the gateway is unreachable (simulated)")
        resp = await super().ack(complete, fail)
        self.ack_sizes.append(len(complete) + len(fail))
        return resp

    async def complete(self, *args: Any, **kwargs: Any) -> Job:
        self.single_calls += 1
        return await super().complete(*args, **kwargs)

    async def fail(self, *args: Any, **kwargs: Any) -> Job:
        self.single_calls += 1
        return await super().fail(*args, **kwargs)


@pytest.mark.timeout(60)
async def test_outcomes_are_acknowledged_in_batches(api: Api, tenant_a: str, producer: ProducerClient) -> None:
    jobs = await producer.submit_many([JobSubmit(payload={"n": n}, max_attempts=1) for n in range(60)])

    async def handler(payload: dict[str, Any]) -> int:
        if payload["n"] % 10 == 9:
            raise Cancel("tenth")
        return int(payload["n"])

    async with AckCountingClient(api.url, worker_id="w1", api_key=tenant_a, ack_failures=2) as client:
        runner = WorkerRunner(client, handler, concurrency=20, ack_flush_ms=20)
        done = await run_until(runner, lambda: all_in(producer, jobs, JobState.SUCCEEDED, JobState.DEAD))
    assert [j.state for j in done] == [JobState.DEAD if n % 10 == 9 else JobState.SUCCEEDED for n in range(60)]
    assert [j.result for j in done if j.state is JobState.SUCCEEDED] == [n for n in range(60) if n % 10 != 9]
    assert client.single_calls == 0  # every outcome went in a batch: with a lease, or to /v1/workers/ack
    assert sum(client.ack_sizes) + sum(client.carried) == 60  # the two simulated outages lost nothing
    assert client.carried, "outcomes ride on the next lease"
    assert max(client.ack_sizes + client.carried) > 1
    assert len(client.ack_sizes) + len(client.carried) < 60


@pytest.mark.timeout(60)
async def test_ack_results_are_judged_per_item(
    api: Api, tenant_a: str, producer: ProducerClient, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(2)])
    fatal: list[ApiError] = []
    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        good, stale = sorted(await client.lease(max_jobs=2, wait_ms=0), key=lambda j: j.payload["n"])
        missing = msgspec.structs.replace(good, id="987654321")
        acks = AckBatcher(client, batch_size=10, flush_s=0.005, on_fatal=fatal.append, name="w1")
        acks.start()
        acks.add(good, completed("fine"))
        acks.add(msgspec.structs.replace(stale, lease_token=stale.lease_token + 1), completed("late"))
        acks.add(missing, completed("nobody"))
        with caplog.at_level(logging.WARNING, logger="orchestrator.sdk"):
            await asyncio.wait_for(acks.close(), 10)
    assert fatal == []
    assert (acks.batches_sent, acks.items_sent) == (1, 3)
    assert (await producer.get(jobs[0].id)).result == "fine"
    assert (await producer.get(jobs[1].id)).state is JobState.RUNNING
    assert f"job {stale.id}: lease lost" in caplog.text
    assert "job 987654321: not found" in caplog.text


def test_a_malformed_webhook_timestamp_is_refused() -> None:
    body = b'{"id":"1"}'
    now = 1_700_000_000
    good = webhook_signature("s3cret", str(now), body)
    assert verify_webhook("s3cret", str(now), body, good, now=now)
    for bad in ("²", "¹²³", "9" * 5000, " 12", "12 ", "", "-1", "+12", "1_0", "1.5", "١٢٣"):
        # Signed with the odd timestamp itself, any age tolerated: only its form can refuse it.
        signature = webhook_signature("s3cret", bad, body)
        assert verify_webhook("s3cret", bad, body, signature, math.inf, now=now) is False, bad


def test_false_flags_are_left_out_of_request_bodies() -> None:
    assert b"snooze" not in body_of(AckFail(id="1", lease_token=1, error="e"))
    assert b'"snooze":true' in body_of(AckFail(id="1", lease_token=1, error="e", snooze=True))
    assert b'"retryable":false' in body_of(AckFail(id="1", lease_token=1, error="e", retryable=False))


@pytest.mark.timeout(60)
async def test_stop_fails_what_outlives_the_shutdown_deadline(
    api: Api, tenant_a: str, producer: ProducerClient
) -> None:
    quick, slow_async, slow_sync = await producer.submit_many(
        [
            JobSubmit(payload={"job": name}, kind=kind, max_attempts=3)
            for name, kind in (("quick", ""), ("slow_async", ""), ("slow_sync", "sync"))
        ]
    )
    started: set[str] = set()
    release_quick = asyncio.Event()
    release_thread = threading.Event()

    async def all_started() -> bool:
        return len(started) == 3

    async def handler(payload: dict[str, Any]) -> str:
        started.add(payload["job"])
        if payload["job"] == "quick":
            await release_quick.wait()
        else:
            await asyncio.Event().wait()
        return "done"

    def sync_handler(payload: dict[str, Any]) -> str:
        started.add(payload["job"])
        release_thread.wait(30)
        return "too late"

    async with WorkerClient(api.url, worker_id="w1", api_key=tenant_a) as client:
        runner = WorkerRunner(client, handler, concurrency=3, shutdown_timeout_s=0.5)
        runner.register("sync", sync_handler)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(all_started)
            runner.stop()
            await asyncio.sleep(0.1)
            release_quick.set()  # finishes within the deadline
            t0 = time.monotonic()
            await asyncio.wait_for(task, 10)
            assert time.monotonic() - t0 < 3
        finally:
            release_thread.set()
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert (await producer.get(quick.id)).state is JobState.SUCCEEDED
    for job in (slow_async, slow_sync):
        left = await producer.get(job.id)  # retryable at once, not stranded until its lease expires
        assert left.state in (JobState.SCHEDULED, JobState.READY), left
        assert (left.attempts, left.last_error) == (1, "worker shutting down"), left


@pytest.mark.timeout(60)
async def test_sync_handlers_run_in_a_pool_sized_to_the_concurrency(
    api: Api, tenant_a: str, producer: ProducerClient
) -> None:
    jobs = await producer.submit_many([JobSubmit(payload={"n": n}) for n in range(12)])
    lock = threading.Lock()
    now = peak = 0
    threads: set[str] = set()

    def handler(payload: dict[str, Any]) -> None:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
            threads.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            now -= 1

    async with WorkerClient(api.url, worker_id="pool", api_key=tenant_a) as client:
        await run_until(
            WorkerRunner(client, handler, concurrency=3), lambda: all_in(producer, jobs, JobState.SUCCEEDED)
        )
    assert peak == 3
    assert len(threads) <= 3
    assert all(name.startswith("orch-pool") for name in threads), threads


@pytest.mark.timeout(60)
async def test_a_revoked_key_stops_the_runner(api: Api, producer: ProducerClient) -> None:
    job = await producer.submit({})
    key = await api.worker_key()
    started, abandoned = asyncio.Event(), asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never returns: only the runner can end it
        except asyncio.CancelledError:
            abandoned.set()
            raise

    async with WorkerClient(api.url, worker_id="w1", api_key=key) as client:
        # The one slot is busy, so no lease is in flight: the heartbeat alone meets the revocation.
        task = asyncio.create_task(WorkerRunner(client, handler, concurrency=1, lease_seconds=3).run())
        await asyncio.wait_for(started.wait(), 10)
        r = await api.admin("DELETE", f"/v1/admin/keys/{key.split('.', 1)[0]}")
        assert r.status in (200, 204), r.body
        with pytest.raises(Unauthorized):
            await asyncio.wait_for(task, 10)
    assert abandoned.is_set()
    # Abandoned, not reported: the job keeps its lease until it expires.
    left = await producer.get(job.id)
    assert (left.state, left.attempts, left.last_error) == (JobState.RUNNING, 1, None)


@pytest.mark.timeout(60)
async def test_sync_producer_client(api: Api, tenant_a: str) -> None:
    def script() -> list[Job]:
        with SyncProducerClient(api.url, api_key=tenant_a) as p:
            first = p.submit({"n": 1}, delay_ms=60_000)
            batch = p.submit_many([JobSubmit(payload={"n": 2}), JobSubmit(payload={"n": 3})])
            page = p.list(limit=10)
            assert [j.id for j in page.jobs] == [batch[1].id, batch[0].id, first.id]
            cancelled = p.cancel(first.id)
            replayed = p.retry(first.id)
            with pytest.raises(NotFound):
                p.get("9999999")
            with pytest.raises(WaitTimeout) as timed_out:  # nobody runs it
                p.wait(batch[0].id, timeout_s=0.2)
            waited = timed_out.value.job
            p.close()
            with pytest.raises(RuntimeError):
                p.get(first.id)
        return [cancelled, replayed, waited]

    cancelled, replayed, waited = await asyncio.to_thread(script)
    assert cancelled.state is JobState.CANCELLED
    assert replayed.state is JobState.READY
    assert waited.state is JobState.READY


@pytest.mark.timeout(60)
async def test_the_handler_runs_inside_the_submits_trace(api: Api, tenant_a: str) -> None:
    from opentelemetry import trace

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await api.signed_with_headers(
        tenant_a, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    assert r.status == 201
    seen: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    client = WorkerClient(api.url, worker_id="w1", api_key=tenant_a)
    runner = WorkerRunner(client, handler, wait_ms=200)
    task = asyncio.create_task(runner.run())
    try:

        async def ran() -> bool:
            return bool(seen)

        await eventually(ran, timeout=10)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
        await client.close()
    assert seen == [int(trace_id, 16)]
