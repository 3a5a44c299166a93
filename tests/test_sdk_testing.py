"""`sdk.testing`: handlers run and judged without a server, the way the runner does it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from core import JobState
from core.wire import AckComplete, AckFail
from sdk import Cancel, Retry, Snooze, current_job
from sdk.testing import FakeJob, arun_handler, run_handler

pytestmark = pytest.mark.timeout(30)


async def double(payload: dict[str, Any]) -> dict[str, Any]:
    return {"twice": payload["n"] * 2}


def test_completed_with_the_result() -> None:
    outcome = run_handler(double, {"n": 21})
    assert (outcome.status, outcome.result, outcome.error, outcome.retryable) == (
        "completed",
        {"twice": 42},
        None,
        False,
    )
    assert outcome.ack("7", 3) == AckComplete(id="7", lease_token=3, result=outcome.encoded)
    assert outcome.encoded is not None and bytes(outcome.encoded) == b'{"twice":42}'


def test_sync_handlers_run_off_the_calling_thread() -> None:
    def handler(payload: dict[str, Any]) -> str:
        return threading.current_thread().name

    outcome = run_handler(handler, {})
    assert outcome.status == "completed"
    assert outcome.result != threading.current_thread().name


def test_retry_snooze_and_cancel() -> None:
    def retry(payload: dict[str, Any]) -> None:
        raise Retry(delay_ms=250, reason="busy")

    async def snooze(payload: dict[str, Any]) -> None:
        raise Snooze(1000)

    def cancel(payload: dict[str, Any]) -> None:
        raise Cancel("unusable input")

    retried, snoozed, cancelled = (run_handler(h, {}) for h in (retry, snooze, cancel))
    assert (retried.status, retried.delay_ms, retried.error, retried.retryable) == ("retried", 250, "busy", True)
    assert (snoozed.status, snoozed.delay_ms, snoozed.error) == ("snoozed", 1000, "snoozed for 1000 ms")
    assert (cancelled.status, cancelled.error, cancelled.retryable) == ("cancelled", "unusable input", False)
    assert isinstance(cancelled.exception, Cancel)
    assert snoozed.ack("1", 2) == AckFail(
        id="1", lease_token=2, error="snoozed for 1000 ms", retryable=True, retry_in_ms=1000, snooze=True
    )
    assert cancelled.ack("1", 2) == AckFail(id="1", lease_token=2, error="unusable input", retryable=False)
    with pytest.raises(ValueError, match="negative"):
        Snooze(-1)


def test_an_exception_fails_with_its_traceback() -> None:
    def handler(payload: dict[str, Any]) -> None:
        raise KeyError(payload.get("missing"))

    outcome = run_handler(handler, {})
    assert outcome.status == "failed"
    assert outcome.retryable
    assert outcome.error is not None
    assert outcome.error.startswith("Traceback (most recent call last)")
    assert "KeyError: None" in outcome.error
    assert isinstance(outcome.exception, KeyError)


def test_a_result_that_is_not_json_fails() -> None:
    unencodable = run_handler(lambda payload: object(), {})
    assert unencodable.status == "failed"
    assert unencodable.error is not None and "Traceback" in unencodable.error


def test_the_job_is_visible_to_the_handler() -> None:
    seen: list[tuple[str, int, int]] = []

    def handler(payload: dict[str, Any]) -> None:
        job = current_job()
        seen.append((job.kind, job.attempts, job.max_attempts))
        if job.attempts < job.max_attempts:
            raise Retry()

    assert run_handler(handler, {}, attempt=2, kind="k").status == "retried"
    assert run_handler(handler, FakeJob({}, attempt=5, max_attempts=5)).status == "completed"
    assert seen == [("k", 2, 5), ("", 5, 5)]
    with pytest.raises(LookupError):
        current_job()


def test_dispatch_by_kind_with_a_mapping() -> None:
    handlers = {"double": double, "": lambda payload: "default"}
    assert run_handler(handlers, {"n": 1}, kind="double").result == {"twice": 2}
    assert run_handler(handlers, {"n": 1}).result == "default"
    unknown = run_handler({"double": double}, {"n": 1}, kind="other")
    assert (unknown.status, unknown.error) == ("failed", "no handler for job kind 'other'")


def test_the_empty_kind_is_the_default_of_a_mapping() -> None:
    handlers = {"double": double, "": lambda payload: f"default for {current_job().kind!r}"}
    assert run_handler(handlers, {"n": 1}, kind="other").result == "default for 'other'"
    assert run_handler(handlers, FakeJob({"n": 1}, kind="x")).result == "default for 'x'"
    assert run_handler(handlers, {"n": 4}, kind="double").result == {"twice": 8}  # its own handler first


async def test_the_async_form_dispatches_the_same_way() -> None:
    handlers = {"": double}
    assert (await arun_handler(handlers, {"n": 3}, kind="anything")).result == {"twice": 6}


def test_fake_job() -> None:
    job = FakeJob({"a": 1}, kind="k", attempt=3, queue="q", tenant_id="t", id="42", lease_token=9)
    assert (job.payload, job.kind, job.attempts, job.queue, job.tenant_id, job.id) == ({"a": 1}, "k", 3, "q", "t", "42")
    assert (job.state, job.lease_token) == (JobState.RUNNING, 9)
    with pytest.raises(ValueError, match="attempt"):
        FakeJob(attempt=0)


async def test_in_an_event_loop_use_the_async_form() -> None:
    assert (await arun_handler(double, {"n": 2})).result == {"twice": 4}
    with pytest.raises(RuntimeError, match="arun_handler"):
        run_handler(double, {"n": 2})
