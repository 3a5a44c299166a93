"""The SDK rides out 429 and 5xx answers, waiting no less than a `Retry-After`: against a real
gateway whose database goes away, and against a small real HTTP server that answers as told."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from aiohttp import web

import db
from core import JobState
from core.wire import Job, LeaseResponse
from sdk import ProducerClient, SdkError, Unavailable, WorkerClient, WorkerRunner
from sdk.testing import FakeJob

from .support import Api, eventually

# A little under the 1 s the server asks for: the loop's clock may round a sleep down.
AT_LEAST_RETRY_AFTER_S = 0.95
# The backoff alone: 0.1 s doubling, drawn from 50-100 %; well under a second for these tries.
BACKOFF_ONLY_UNDER_S = 0.9


# --- a real gateway whose database goes away -------------------------------------------------


@contextlib.asynccontextmanager
async def database_unavailable(pg_server: str, database_url: str) -> AsyncIterator[None]:
    """No connection to the test's database is allowed, and those open are ended, until the
    block ends."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = await db.connect(pg_server)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            yield
        finally:
            await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await conn.close()


class LeaseRecordingClient(WorkerClient):
    """Records when each lease was asked for, and the error it ended with (None: answered)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts: list[tuple[float, SdkError | None]] = []

    async def lease_and_ack(self, *args: Any, **kwargs: Any) -> LeaseResponse:
        at = time.monotonic()
        try:
            answer = await super().lease_and_ack(*args, **kwargs)
        except SdkError as exc:
            self.attempts.append((at, exc))
            raise
        self.attempts.append((at, None))
        return answer

    def refusals(self) -> list[Unavailable]:
        return [exc for _, exc in self.attempts if isinstance(exc, Unavailable)]


def gaps_after(attempts: Sequence[tuple[float, SdkError | None]]) -> list[tuple[SdkError, float]]:
    """Each failed attempt with the time until the next attempt."""
    return [(exc, attempts[i + 1][0] - at) for i, (at, exc) in enumerate(attempts[:-1]) if exc is not None]


@pytest.mark.timeout(90)
async def test_the_runner_waits_out_a_database_outage_as_retry_after_asks(
    api: Api, tenant_key: str, pg_server: str, database_url: str
) -> None:
    async with ProducerClient(api.url, api_key=tenant_key) as producer:
        job = await producer.submit({"n": 7})

        async def handler(payload: dict[str, Any]) -> int:
            return int(payload["n"]) * 6

        async with LeaseRecordingClient(api.url, worker_id="w1", api_key=tenant_key) as client:
            runner = WorkerRunner(client, handler, wait_ms=500)
            task: asyncio.Task[None] | None = None
            try:
                async with database_unavailable(pg_server, database_url):
                    task = asyncio.create_task(runner.run())

                    async def refused_thrice() -> bool:
                        assert task is not None and not task.done(), task
                        return len(client.refusals()) >= 3

                    await eventually(refused_thrice, timeout=30)
                # The job is leased only now, by the first lease after the outage.
                done = await producer.wait(job.id, timeout_s=30)
            finally:
                runner.stop()
                if task is not None:
                    await asyncio.wait_for(task, 15)
    assert (done.state, done.result) == (JobState.SUCCEEDED, 42)
    refusals = client.refusals()
    assert all((r.status, r.retry_after) == (503, 1.0) for r in refusals), refusals
    waits = [gap for exc, gap in gaps_after(client.attempts) if isinstance(exc, Unavailable)]
    assert len(waits) >= 3
    assert min(waits) >= AT_LEAST_RETRY_AFTER_S, waits  # the backoff alone would be 0.05-0.4 s


@pytest.fixture
async def tenant_key(api: Api) -> str:
    return await api.tenant("tenant-a")


# --- a small real HTTP server that answers as told --------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    at: float
    body: Any


class ScriptedServer:
    """Answers each request to a path with the next of its scripted replies; once they run out,
    a lease request is held until it is dropped (a long-poll with nothing to lease)."""

    def __init__(self, script: dict[str, list[Reply]]) -> None:
        self.script = {path: list(replies) for path, replies in script.items()}
        self.seen: dict[str, list[Seen]] = {path: [] for path in script}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path if request.path in self.script else request.path.rsplit("/", 1)[0] + "/{id}"
        raw = await request.read()
        self.seen[path].append(Seen(time.monotonic(), msgspec.json.decode(raw) if raw else None))
        replies = self.script[path]
        if not replies:
            await asyncio.Event().wait()
        reply = replies.pop(0)
        body = b"" if reply.body is None else msgspec.json.encode(reply.body)
        content_type = "application/json" if reply.status < 400 else "application/problem+json"
        return web.Response(status=reply.status, body=body, headers={"Content-Type": content_type, **reply.headers})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def gaps(self, path: str) -> list[float]:
        times = [s.at for s in self.seen[path]]
        return [b - a for a, b in itertools.pairwise(times)]


@contextlib.asynccontextmanager
async def scripted(script: dict[str, list[Reply]]) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(script)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def problem(status: int, retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, {"type": "about:blank", "title": "Busy", "status": status, "detail": "try later"}, headers)


KEY = "tk_scripted.secret"


def job_body(state: JobState, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    job = Job(
        id="5",
        tenant_id="t",
        queue="default",
        kind="",
        payload={},
        priority=0,
        state=state,
        attempts=1,
        max_attempts=5,
        run_at=now,
        created_at=now,
        **fields,
    )
    decoded: dict[str, Any] = msgspec.to_builtins(job)
    return decoded


@pytest.mark.timeout(30)
async def test_waiting_for_a_job_retries_429_and_5xx_and_honours_retry_after() -> None:
    path = "/v1/jobs/{id}"
    replies = [
        problem(429, retry_after="1"),
        Reply(500, {"type": "about:blank", "title": "Error", "status": 500, "detail": "internal error"}),
        problem(503),
        problem(502, retry_after="1"),
        Reply(200, job_body(JobState.SUCCEEDED, result="ok")),
    ]
    async with scripted({path: replies}) as server, ProducerClient(server.url, api_key=KEY) as producer:
        done = await producer.wait("5", timeout_s=20)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "ok")
    after_429, after_500, after_503, after_502 = server.gaps(path)
    assert after_429 >= AT_LEAST_RETRY_AFTER_S
    assert after_500 < BACKOFF_ONLY_UNDER_S and after_503 < BACKOFF_ONLY_UNDER_S  # no Retry-After: backoff
    assert after_502 >= AT_LEAST_RETRY_AFTER_S


@pytest.mark.timeout(30)
async def test_the_runner_honours_retry_after_on_leases_and_acknowledgements() -> None:
    leased = msgspec.to_builtins(FakeJob({"n": 2}, id="5", lease_token=3))
    async with scripted(
        {
            "/v1/workers/lease": [problem(429, retry_after="1"), Reply(200, {"jobs": [leased]})],
            "/v1/workers/ack": [
                problem(503, retry_after="1"),
                problem(504),
                Reply(200, {"results": [{"id": "5", "status": 200, "state": "succeeded"}]}),
            ],
        }
    ) as server:

        async def handler(payload: dict[str, Any]) -> int:
            return int(payload["n"]) + 1

        async with WorkerClient(server.url, worker_id="w1", api_key=KEY) as client:
            runner = WorkerRunner(client, handler, wait_ms=1000)
            task = asyncio.create_task(runner.run())
            try:

                async def acknowledged() -> bool:
                    assert not task.done(), task
                    return len(server.seen["/v1/workers/ack"]) == 3

                await eventually(acknowledged, timeout=20)
            finally:
                runner.stop()
                await asyncio.wait_for(task, 10)
    (after_429,) = server.gaps("/v1/workers/lease")[:1]
    assert after_429 >= AT_LEAST_RETRY_AFTER_S
    after_503, after_504 = server.gaps("/v1/workers/ack")
    assert after_503 >= AT_LEAST_RETRY_AFTER_S
    assert after_504 < BACKOFF_ONLY_UNDER_S
    # The same outcome every time: a repeat of complete is safe.
    bodies = [s.body for s in server.seen["/v1/workers/ack"]]
    assert bodies == [{"complete": [{"id": "5", "lease_token": 3, "result": 3}], "fail": []}] * 3
