from __future__ import annotations

import pytest

from .support import Api


@pytest.mark.timeout(60)
async def test_submit_lease_complete(api: Api) -> None:
    key = await api.tenant("tenant-a")
    r = await api.signed(key, "POST", "/v1/jobs", {"payload": {"n": 1}})
    assert r.status == 201, r.body
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w1", "wait_ms": 0})
    assert r.status == 200, r.body
    (job,) = r.body["jobs"]
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": job["lease_token"], "result": {"ok": True}}
    )
    assert r.status == 200, r.body
    assert r.body["state"] == "succeeded"
