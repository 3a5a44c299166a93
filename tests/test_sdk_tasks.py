"""Tasks: typed functions submitted as jobs of their kind and run by a WorkerRunner, against a
real gateway."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from mypy import api as mypy_api

from core import JobState
from examples import typed_usage
from sdk import Job, ProducerClient, SyncProducerClient, Tasks, WorkerClient, WorkerRunner
from sdk.testing import arun_handler

from .support import Api

ROOT = Path(__file__).resolve().parent.parent


class Address(msgspec.Struct, frozen=True):
    street: str
    city: str


class Opaque:
    """Not something msgspec can decode."""


tasks = Tasks()
seen: list[tuple[str, Any]] = []


@tasks.task("email.send", queue="mail", max_attempts=3)
async def send_email(to: str, subject: str, body: str = "", cc: list[str] = ["ops@example.com"]) -> dict[str, Any]:  # noqa: B006
    return {"to": to, "subject": subject, "body": body, "cc": cc}


@tasks.task("label.print", queue="mail")
def print_label(address: Address, /, copies: int, *, at: datetime) -> str:
    """A plain function: it runs in the runner's threads."""
    seen.append(("label", (address, copies, at)))
    return f"{copies} x {address.street}, {address.city} at {at.isoformat()}"


@pytest.fixture
async def key(api: Api) -> str:
    return await api.tenant("tenant-a")


@pytest.fixture
async def producer(api: Api, key: str) -> AsyncIterator[ProducerClient]:
    async with ProducerClient(api.url, api_key=key) as p:
        yield p


async def _run(api: Api, key: str, producer: ProducerClient, jobs: list[Job]) -> list[Job]:
    async with WorkerClient(api.url, worker_id="tasks", api_key=key, queues=("mail",)) as worker:
        runner = WorkerRunner(worker, handlers=tasks.handlers, concurrency=2, shutdown_timeout_s=5)
        running = asyncio.create_task(runner.run())
        try:
            return [await producer.wait(j.id, timeout_s=20) for j in jobs]
        finally:
            runner.stop()
            await asyncio.wait_for(running, 10)


@pytest.mark.timeout(60)
async def test_submitted_tasks_run_with_their_typed_arguments(api: Api, key: str, producer: ProducerClient) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    mail = await send_email.submit(producer, "ada@example.com", subject="hi")
    label = await print_label.submit(producer, Address("1 Main St", "Springfield"), 2, at=at)
    assert (mail.kind, mail.queue, mail.max_attempts) == ("email.send", "mail", 3)
    assert mail.payload == {"to": "ada@example.com", "subject": "hi", "body": "", "cc": ["ops@example.com"]}
    assert label.payload == {
        "address": {"street": "1 Main St", "city": "Springfield"},
        "copies": 2,
        "at": "2030-01-02T03:04:05Z",
    }
    done = await _run(api, key, producer, [mail, label])
    assert [j.state for j in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert done[0].result == {"to": "ada@example.com", "subject": "hi", "body": "", "cc": ["ops@example.com"]}
    assert done[1].result == "2 x 1 Main St, Springfield at 2030-01-02T03:04:05+00:00"
    # The worker decoded the payload into the annotated types, not dicts and strings.
    assert ("label", (Address("1 Main St", "Springfield"), 2, at)) in seen


async def test_arguments_are_checked_before_anything_is_sent(producer: ProducerClient) -> None:
    with pytest.raises(TypeError, match="missing a required argument: 'subject'"):
        await send_email.submit(producer, "ada@example.com")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"Expected `str`, got `int` - at `\$.subject`"):
        await send_email.submit(producer, "ada@example.com", subject=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bcc'"):
        await send_email.submit(producer, "ada@example.com", subject="hi", bcc="x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"task 'label.print'.*\$.at"):
        print_label.job(Address("s", "c"), 1, at="yesterday")  # type: ignore[arg-type]
    assert (await producer.list()).jobs == []


@pytest.mark.timeout(60)
async def test_a_payload_that_does_not_fit_fails_the_job_for_good(api: Api, key: str, producer: ProducerClient) -> None:
    bad = await producer.submit(
        {"to": "ada@example.com", "subject": 7}, kind="email.send", queue="mail", max_attempts=3
    )
    unknown = await producer.submit(
        {"to": "a", "subject": "b", "urgent": True}, kind="email.send", queue="mail", max_attempts=3
    )
    done = await _run(api, key, producer, [bad, unknown])
    assert [(j.state, j.attempts) for j in done] == [(JobState.DEAD, 1), (JobState.DEAD, 1)]
    assert done[0].last_error is not None and "task 'email.send'" in done[0].last_error
    assert "Expected `str`, got `int` - at `$.subject`" in done[0].last_error
    assert done[1].last_error is not None and "unknown field `urgent`" in done[1].last_error


@pytest.mark.timeout(60)
async def test_options_batches_and_the_blocking_client(api: Api, key: str, producer: ProducerClient) -> None:
    once = send_email.with_options(idempotency_key="welcome-ada", priority=7, delay_ms=60_000)
    first = await once.submit(producer, "ada@example.com", subject="welcome")
    again = await once.submit(producer, "ada@example.com", subject="welcome")
    assert (again.id, first.priority, first.state, first.queue) == (first.id, 7, JobState.SCHEDULED, "mail")
    assert send_email.with_options(queue="bulk").job("b@example.com", subject="s").queue == "bulk"
    # with_options made copies: the task's own options are untouched.
    plain = send_email.job("b@example.com", subject="s")
    assert (plain.queue, plain.priority, plain.idempotency_key) == ("mail", 0, None)

    batch = await producer.submit_many([send_email.job(f"u{i}@example.com", subject="news") for i in range(3)])
    assert [j.kind for j in batch] == ["email.send"] * 3

    def script() -> Job:
        with SyncProducerClient(api.url, api_key=key) as sync:
            return send_email.submit(sync, "sync@example.com", subject="blocking")

    blocking = await asyncio.to_thread(script)
    assert blocking.payload["to"] == "sync@example.com"
    done = await _run(api, key, producer, [*batch, blocking])
    assert {j.state for j in done} == {JobState.SUCCEEDED}


async def test_calling_a_task_runs_the_function_and_handlers_work_in_sdk_testing() -> None:
    assert (await send_email("a", "b"))["cc"] == ["ops@example.com"]
    assert send_email.__name__ == "send_email" and print_label.__doc__ is not None
    outcome = await arun_handler(tasks.handlers, {"to": "a", "subject": "b"}, kind="email.send")
    assert (outcome.status, outcome.result["to"]) == ("completed", "a")
    refused = await arun_handler(tasks["email.send"].handler, {"to": "a"})
    assert (refused.status, refused.retryable) == ("cancelled", False)
    assert "missing required field `subject`" in (refused.error or "")
    assert len(tasks) == 2 and "label.print" in tasks and "nope" not in tasks


def test_registration_refuses_what_cannot_be_a_payload() -> None:
    registry = Tasks()

    @registry.task("k")
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="already registered"):

        @registry.task("k")
        def g(x: int) -> int:
            return x

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):

        @registry.task("varargs")
        def h(*xs: int) -> int:
            return sum(xs)

    with pytest.raises(TypeError, match="cannot be a JSON payload"):

        @registry.task("opaque")
        def i(x: Opaque) -> None:
            pass

    class Local(msgspec.Struct):
        n: int

    # Postponed annotations are resolved in the function's module, where a local class is not.
    with pytest.raises(TypeError, match="cannot resolve the annotations"):

        @registry.task("local")
        def j(x: Local) -> None:
            pass

    assert list(registry.handlers) == ["k"]


@pytest.mark.timeout(60)
async def test_the_typed_example_runs_its_tasks(api: Api, key: str) -> None:
    assert typed_usage.check_tasks() == {"url": "https://example.com/a.png", "width": 32}
    before, done = await asyncio.wait_for(typed_usage.run_tasks(api.url, key), 40)
    assert before is JobState.READY
    assert [(j.kind, j.state, j.priority, j.result) for j in done] == [
        ("thumbnail", JobState.SUCCEEDED, 0, {"width": 64, "height": 48}),
        ("thumbnail", JobState.SUCCEEDED, 5, {"width": 128, "height": 96}),
    ]


TYPING_SNIPPET = """
from typing import Any

from sdk import AdminClient, ProducerClient, SyncProducerClient, Tasks, WaitTimeout

tasks = Tasks()


@tasks.task("email.send")
async def send_email(to: str, subject: str, retries: int = 0) -> dict[str, str]:
    return {}


@tasks.task("label.print")
def print_label(street: str) -> str:
    return street


async def use(p: ProducerClient, s: SyncProducerClient, a: AdminClient, e: WaitTimeout) -> None:
    reveal_type(send_email)  # task
    reveal_type(await send_email.submit(p, "a", subject="b"))  # async submit
    reveal_type(send_email.submit(s, "a", subject="b"))  # sync submit
    reveal_type(send_email.job("a", "b"))  # job
    reveal_type(send_email.with_options(priority=1))  # with_options
    reveal_type(print_label("x"))  # call
    reveal_type(tasks.handlers)  # handlers
    reveal_type(e.job)  # timeout job
    reveal_type(await p.schedules.list())  # schedules
    reveal_type(await p.retry_policies.get())  # policy
    reveal_type(await p.queues.paused())  # paused
    reveal_type(await p.consumers.read("c"))  # consumer read
    reveal_type(await p.webhooks.resume("1"))  # webhook
    reveal_type(s.consumers.ack("c", "1-1"))  # sync ack
    reveal_type(await a.create_tenant("t"))  # tenant created
    reveal_type(await a.tenants())  # tenants
    reveal_type(await a.reap())  # reap
    await send_email.submit(p, "a", subject=3)  # error: argument type
    send_email.job("a")  # error: missing argument
    send_email.job("a", "b", bcc="c")  # error: unknown argument
    await a.update_tenant("t", weight="heavy")  # error: weight
"""

TYPING_EXPECTED = {
    "task": "sdk._tasks.Task[[to: str, subject: str, retries: int =], typing.Coroutine[Any, Any, dict[str, str]]]",
    "async submit": "core.wire.Job",
    "sync submit": "core.wire.Job",
    "job": "core.wire.JobSubmit",
    "with_options": "sdk._tasks.Task[[to: str, subject: str, retries: int =], "
    "typing.Coroutine[Any, Any, dict[str, str]]]",
    "call": "str",
    "handlers": "dict[str, def (dict[str, Any]) -> Any]",
    "timeout job": "core.wire.Job",
    "schedules": "list[core.wire.Schedule]",
    "policy": "core.wire.RetryPolicyOut",
    "paused": "list[str]",
    "consumer read": "core.wire.EventPage",
    "webhook": "core.wire.Webhook",
    "sync ack": "core.wire.Consumer",
    "tenant created": "core.wire.TenantCreated",
    "tenants": "list[core.wire.Tenant]",
    "reap": "int",
}


@pytest.mark.timeout(180)
def test_revealed_types_of_tasks_and_management(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # mypy finds `sdk` and `core` from the repository root
    snippet = tmp_path / "snippet.py"
    snippet.write_text(TYPING_SNIPPET)
    out, err, status = mypy_api.run(
        [str(snippet), "--strict", "--no-error-summary", "--hide-error-context", "--cache-dir", str(tmp_path / "c")]
    )
    assert not err, err
    lines = TYPING_SNIPPET.splitlines()
    revealed: dict[str, str] = {}
    errors: set[str] = set()
    for match in re.finditer(r"^.*?:(\d+): (note|error): (.*)$", out, re.MULTILINE):
        label = lines[int(match[1]) - 1].rsplit("# ", 1)[-1]
        if match[2] == "note" and match[3].startswith("Revealed type is "):
            revealed[label] = match[3].removeprefix("Revealed type is ").strip('"')
        elif match[2] == "error":
            errors.add(label)
    assert revealed == TYPING_EXPECTED, out
    assert errors == {"error: argument type", "error: missing argument", "error: unknown argument", "error: weight"}, (
        out
    )
    assert status == 1
