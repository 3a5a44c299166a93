"""Bad input gets a problem+json error naming what is wrong, and loses nothing."""

from __future__ import annotations

import pytest

from .support import Api, fetchval

pytestmark = pytest.mark.timeout(60)


async def test_malformed_json_is_400(api: Api) -> None:
    key = await api.tenant("tenant-a")
    for body in (b'{"payload": ', b"not json", b'{"payload": {}}}'):
        r = await api.signed(key, "POST", "/v1/jobs", body=body)
        assert r.status == 400, (body, r.body)
        assert r.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"payload": [1, 2]}, "payload"),
        ("/v1/jobs", {"payload": {}, "priority": "high"}, "priority"),
        ("/v1/jobs", {"payload": {}, "max_attempts": 0}, "max_attempts"),
        ("/v1/jobs", {"payload": {}, "queue": ""}, "queue"),
        ("/v1/jobs", {"payload": {}, "delay_ms": -1}, "delay_ms"),
        ("/v1/jobs", {"payload": {}, "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"}, "delay_ms"),
        ("/v1/jobs", {"payload": {}, "surprise": 1}, "surprise"),
        ("/v1/jobs/batch", {"jobs": []}, "jobs"),
        ("/v1/jobs/batch", {"jobs": [{"payload": {}}, {"payload": {}, "priority": 5000}]}, "jobs[1].priority"),
        ("/v1/workers/lease", {"worker_id": "w", "max_jobs": 101}, "max_jobs"),
        ("/v1/workers/lease", {"worker_id": "w", "wait_ms": 60001}, "wait_ms"),
        ("/v1/workers/lease", {"max_jobs": 1}, "worker_id"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    api: Api, database_url: str, path: str, body: object, field: str
) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "POST", path, body)
    assert r.status == 422, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.body["field"] == field, r.body
    assert field in r.body["detail"]
    assert await fetchval(database_url, "SELECT count(*) FROM jobs") == 0


async def test_invalid_query_parameters_are_refused(api: Api) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "GET", "/v1/jobs?state=lost")
    assert (r.status, r.body["field"]) == (422, "state")
    r = await api.signed(key, "GET", "/v1/jobs?limit=0")
    assert r.status in (400, 422), r.body
    r = await api.signed(key, "GET", "/v1/jobs/1?wait_ms=70000")
    assert r.status in (400, 422), r.body


async def test_oversize_body_is_413(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    big = {"payload": {"blob": "x" * (1024 * 1024 + 10)}}
    r = await api.signed(key, "POST", "/v1/jobs", big)
    assert r.status == 413, r.body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert await fetchval(database_url, "SELECT count(*) FROM jobs") == 0


async def test_unknown_route_and_method_are_problems(api: Api) -> None:
    r = await api.admin("GET", "/v1/nothing-here")
    assert r.status == 404 and r.headers["Content-Type"].startswith("application/problem+json")
    r = await api.admin("DELETE", "/healthz")
    assert r.status == 405 and r.headers["Content-Type"].startswith("application/problem+json")


async def test_duplicate_tenant_is_409(api: Api) -> None:
    await api.tenant("tenant-a")
    r = await api.admin("POST", "/v1/admin/tenants", {"id": "tenant-a"})
    assert r.status == 409
