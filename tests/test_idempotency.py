"""Idempotency keys against a real gateway: the same request again returns the first job (200);
the key reused for a different request is a 409 naming `idempotency_key` (Stripe's rule), and
in a batch it refuses the whole batch, inserting nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sdk import Conflict, JobSubmit, ProducerClient

from .support import Api, fetch

BASE: dict[str, Any] = {
    "payload": {"to": "ada@example.com", "n": 1, "tags": ["a", "b"], "flag": True},
    "queue": "mail",
    "kind": "email.send",
    "priority": 5,
    "max_attempts": 4,
    "timeout_seconds": 60,
    "retry_base_ms": 100,
    "retry_cap_ms": 1000,
    "idempotency_key": "order-1",
}


async def _counts(database_url: str) -> tuple[int, int]:
    jobs = await fetch(database_url, "SELECT count(*) AS n FROM jobs")
    events = await fetch(database_url, "SELECT count(*) AS n FROM events")
    return jobs[0]["n"], events[0]["n"]


async def test_the_same_request_again_returns_the_first_job(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    first = await api.signed(key, "POST", "/v1/jobs", BASE)
    assert first.status == 201, first.body
    # The same fields in another order, numbers written differently, and the relative timing
    # fields (left out of the comparison: a resend is sent later) are the same request.
    same = {
        **BASE,
        "payload": {"flag": True, "tags": ["a", "b"], "n": 1.0, "to": "ada@example.com"},
        "delay_ms": 5000,
    }
    again = await api.signed(key, "POST", "/v1/jobs", same)
    assert again.status == 200, again.body
    assert again.body["id"] == first.body["id"]
    later = {**BASE, "run_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    assert (await api.signed(key, "POST", "/v1/jobs", later)).body["id"] == first.body["id"]
    # max_attempts left out: the job's own (given by the policies, or the first submit) stands.
    omitted = {k: v for k, v in BASE.items() if k != "max_attempts"}
    assert (await api.signed(key, "POST", "/v1/jobs", omitted)).status == 200
    assert await _counts(database_url) == (1, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payload", {**BASE["payload"], "n": 2}),
        ("payload", {**BASE["payload"], "flag": 1}),  # true is not 1
        ("payload", {**BASE["payload"], "extra": None}),
        ("payload", {**BASE["payload"], "tags": ["b", "a"]}),
        ("queue", "other"),
        ("kind", "email.other"),
        ("priority", 6),
        ("max_attempts", 5),
        ("timeout_seconds", 61),
        ("retry_base_ms", 101),
        ("retry_cap_ms", 1001),
    ],
)
async def test_a_different_request_with_the_key_is_a_409(api: Api, database_url: str, field: str, value: Any) -> None:
    key = await api.tenant("tenant-a")
    first = await api.signed(key, "POST", "/v1/jobs", BASE)
    assert first.status == 201
    r = await api.signed(key, "POST", "/v1/jobs", {**BASE, field: value})
    assert r.status == 409, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.body["field"] == "idempotency_key"
    assert field in r.body["detail"] and first.body["id"] in r.body["detail"]
    assert await _counts(database_url) == (1, 1)


async def test_a_field_left_to_its_default_differs_from_one_given(api: Api) -> None:
    key = await api.tenant("tenant-a")
    assert (await api.signed(key, "POST", "/v1/jobs", BASE)).status == 201
    without_timeout = {k: v for k, v in BASE.items() if k != "timeout_seconds"}
    r = await api.signed(key, "POST", "/v1/jobs", without_timeout)
    assert (r.status, r.body["field"]) == (409, "idempotency_key")


async def test_keys_are_per_tenant(api: Api) -> None:
    a, b = await api.tenant("tenant-a"), await api.tenant("tenant-b")
    assert (await api.signed(a, "POST", "/v1/jobs", BASE)).status == 201
    assert (await api.signed(b, "POST", "/v1/jobs", {**BASE, "payload": {"other": 1}})).status == 201


async def test_a_batch_with_a_reused_key_is_refused_whole(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    first = await api.signed(key, "POST", "/v1/jobs", BASE)
    assert first.status == 201
    before = await _counts(database_url)
    batch = {
        "jobs": [
            {"payload": {"v": 0}},
            {"payload": {"v": 1}, "idempotency_key": "fresh"},
            {**BASE, "priority": 0},
            {"payload": {"v": 3}},
        ]
    }
    r = await api.signed(key, "POST", "/v1/jobs/batch", batch)
    assert r.status == 409, r.body
    assert r.body["field"] == "jobs[2].idempotency_key"
    assert "priority" in r.body["detail"]
    # The items before it were inserted by the same statement: rolled back with it.
    assert await _counts(database_url) == before
    assert await fetch(database_url, "SELECT 1 FROM jobs WHERE idempotency_key = 'fresh'") == []
    # The key "fresh" is still free, and the batch goes through once it agrees.
    batch["jobs"][2] = BASE
    ok = await api.signed(key, "POST", "/v1/jobs/batch", batch)
    assert ok.status == 201, ok.body
    assert ok.body["jobs"][2]["id"] == first.body["id"]
    assert await _counts(database_url) == (before[0] + 3, before[1] + 3)


async def test_a_key_repeated_inside_a_batch_must_repeat_the_request(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    same = {"jobs": [{"payload": {"v": 1}, "idempotency_key": "k"}, {"payload": {"v": 1}, "idempotency_key": "k"}]}
    r = await api.signed(key, "POST", "/v1/jobs/batch", same)
    assert r.status == 201, r.body
    assert r.body["jobs"][0]["id"] == r.body["jobs"][1]["id"]
    differ = {
        "jobs": [
            {"payload": {"v": 1}, "idempotency_key": "k2"},
            {"payload": {"v": 0}},
            {"payload": {"v": 2}, "idempotency_key": "k2"},
        ]
    }
    before = await _counts(database_url)
    r = await api.signed(key, "POST", "/v1/jobs/batch", differ)
    assert (r.status, r.body["field"]) == (409, "jobs[2].idempotency_key"), r.body
    assert await _counts(database_url) == before


async def test_simultaneous_submits_with_one_key_make_one_job_and_refuse_the_others(
    api: Api, database_url: str
) -> None:
    key = await api.tenant("tenant-a")
    bodies = [{"payload": {"n": i % 2}, "idempotency_key": "race"} for i in range(20)]
    replies = await asyncio.gather(*(api.signed(key, "POST", "/v1/jobs", b) for b in bodies))
    created = [(b, r) for b, r in zip(bodies, replies, strict=True) if r.status == 201]
    assert len(created) == 1
    winner = created[0][0]["payload"]
    for b, r in zip(bodies, replies, strict=True):
        if r.status != 201:
            assert r.status == (200 if b["payload"] == winner else 409), r.body
    assert len(await fetch(database_url, "SELECT 1 FROM jobs")) == 1


async def test_the_sdk_raises_conflict(api: Api) -> None:
    key = await api.tenant("tenant-a")
    async with ProducerClient(api.url, api_key=key) as producer:
        first = await producer.submit({"n": 1}, idempotency_key="sdk-1")
        assert (await producer.submit({"n": 1}, idempotency_key="sdk-1")).id == first.id
        with pytest.raises(Conflict) as single:
            await producer.submit({"n": 2}, idempotency_key="sdk-1")
        assert (single.value.status, single.value.field) == (409, "idempotency_key")
        with pytest.raises(Conflict) as batch:
            await producer.submit_many(
                [JobSubmit(payload={"n": 3}), JobSubmit(payload={"n": 1}, queue="q", idempotency_key="sdk-1")]
            )
        assert batch.value.field == "jobs[1].idempotency_key"
        assert [j.id for j in (await producer.list()).jobs] == [first.id]
