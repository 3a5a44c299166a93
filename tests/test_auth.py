"""Every way of presenting a wrong credential is refused, and changes nothing."""

from __future__ import annotations

import time

import pytest

from .support import Api, fetchval

pytestmark = pytest.mark.timeout(60)


async def _counts(database_url: str) -> tuple[int, int]:
    jobs = await fetchval(database_url, "SELECT count(*) FROM jobs")
    events = await fetchval(database_url, "SELECT count(*) FROM events")
    return jobs, events


def _problem(r: object, status: int) -> None:
    assert r.status == status, r.body  # type: ignore[attr-defined]
    assert r.headers["Content-Type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    assert r.body["status"] == status and r.body["detail"]  # type: ignore[attr-defined]


async def test_bad_credentials_are_refused_and_change_nothing(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    submit = {"payload": {"x": 1}}
    before = await _counts(database_url)

    # a signature made with the wrong secret
    key_id = key.split(".", 1)[0]
    _problem(await api.signed(f"{key_id}.not-the-secret", "POST", "/v1/jobs", submit), 401)
    # the body changed after signing
    _problem(await api.signed(key, "POST", "/v1/jobs", {"payload": {"x": 2}}, sign_body=b'{"payload":{"x":1}}'), 401)
    # stale and future timestamps
    _problem(await api.signed(key, "POST", "/v1/jobs", submit, timestamp=time.time() - 301), 401)
    _problem(await api.signed(key, "POST", "/v1/jobs", submit, timestamp=time.time() + 301), 401)
    # unknown key
    _problem(await api.signed("tk_nobody.secret", "POST", "/v1/jobs", submit), 401)
    # missing headers, one at a time
    for header in ("X-Key-Id", "X-Timestamp", "X-Nonce", "X-Signature"):
        _problem(await api.signed(key, "POST", "/v1/jobs", submit, drop=header), 401)
    # a malformed nonce
    _problem(await api.signed(key, "POST", "/v1/jobs", submit, nonce="short"), 401)
    assert await _counts(database_url) == before

    # a nonce is accepted once; its replay is refused
    nonce = "replay-nonce-0123456789"
    r = await api.signed(key, "POST", "/v1/jobs", submit, nonce=nonce)
    assert r.status == 201, r.body
    after_one = await _counts(database_url)
    _problem(await api.signed(key, "POST", "/v1/jobs", submit, nonce=nonce), 401)
    assert await _counts(database_url) == after_one


async def test_revoked_key_is_refused_at_once(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "GET", "/v1/jobs")
    assert r.status == 200
    second = (await api.admin("POST", "/v1/admin/tenants/tenant-a/keys")).body["api_key"]
    r = await api.admin("DELETE", f"/v1/admin/keys/{key.split('.', 1)[0]}")
    assert r.status == 204
    before = await _counts(database_url)
    _problem(await api.signed(key, "POST", "/v1/jobs", {"payload": {}}), 401)
    assert await _counts(database_url) == before
    # the tenant's other key still works
    assert (await api.signed(second, "POST", "/v1/jobs", {"payload": {}})).status == 201
    assert (await api.admin("DELETE", "/v1/admin/keys/tk_unknown")).status == 404


async def test_tenants_cannot_see_or_touch_each_others_jobs(api: Api, database_url: str) -> None:
    a = await api.tenant("tenant-a")
    b = await api.tenant("tenant-b")
    job = (await api.signed(b, "POST", "/v1/jobs", {"payload": {"secret": 1}})).body
    leased = (await api.signed(b, "POST", "/v1/workers/lease", {"worker_id": "wb", "wait_ms": 0})).body["jobs"][0]
    token = leased["lease_token"]

    _problem(await api.signed(a, "GET", f"/v1/jobs/{job['id']}"), 404)
    _problem(await api.signed(a, "GET", "/v1/jobs/999999999"), 404)
    _problem(await api.signed(a, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": token}), 404)
    _problem(await api.signed(a, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": token, "error": "x"}), 404)
    _problem(await api.signed(a, "POST", f"/v1/jobs/{job['id']}/heartbeat", {"lease_token": token}), 404)
    ack = await api.signed(a, "POST", "/v1/workers/ack", {"complete": [{"id": job["id"], "lease_token": token}]})
    assert ack.body["results"] == [{"id": job["id"], "status": 404, "state": None}]
    # tenant A's pinned worker never leases B's job, and A's listing does not show it
    assert (await api.signed(b, "POST", "/v1/jobs", {"payload": {}})).status == 201
    assert (await api.signed(a, "POST", "/v1/workers/lease", {"worker_id": "wa", "wait_ms": 0})).body["jobs"] == []
    assert (await api.signed(a, "GET", "/v1/jobs")).body["jobs"] == []
    assert await fetchval(database_url, "SELECT state::text FROM jobs WHERE id = $1", int(job["id"])) == "running"


async def test_operator_routes_need_the_admin_token(api: Api, database_url: str) -> None:
    key = await api.tenant("tenant-a")
    worker = await api.worker_key()
    _problem(await api.signed(key, "POST", "/v1/admin/tenants", {"id": "evil"}), 403)
    _problem(await api.signed(worker, "POST", "/v1/admin/worker-keys"), 403)
    _problem(await api.admin("POST", "/v1/admin/tenants", {"id": "evil"}, token="wrong-token"), 401)
    _problem(await api.admin("GET", "/v1/admin/tenants", token="wrong"), 401)
    assert await fetchval(database_url, "SELECT count(*) FROM tenants WHERE id = 'evil'") == 0
    assert await fetchval(database_url, "SELECT count(*) FROM api_keys") == 2


async def test_shared_worker_keys_may_not_act_as_tenants(api: Api) -> None:
    worker = await api.worker_key()
    _problem(await api.signed(worker, "POST", "/v1/jobs", {"payload": {}}), 403)
    _problem(await api.signed(worker, "GET", "/v1/jobs"), 403)


async def test_disabled_tenant_is_forbidden(api: Api) -> None:
    key = await api.tenant("tenant-a")
    assert (await api.signed(key, "GET", "/v1/jobs")).status == 200  # the key is known to the gateway now
    assert (await api.admin("PATCH", "/v1/admin/tenants/tenant-a", {"disabled": True})).body["disabled"] is True
    _problem(await api.signed(key, "POST", "/v1/jobs", {"payload": {}}), 403)
    assert (await api.admin("PATCH", "/v1/admin/tenants/tenant-a", {"disabled": False})).body["disabled"] is False
    assert (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).status == 201
