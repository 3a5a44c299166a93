"""A lease may carry the outcomes of earlier jobs: they are judged as `POST /v1/workers/ack`
judges them, before the lease, so a busy worker makes one request per batch."""

from __future__ import annotations

import pytest

from .support import Api

pytestmark = pytest.mark.timeout(60)


async def test_a_lease_acknowledges_then_leases(api: Api) -> None:
    key = await api.tenant("acks", max_inflight=2)
    for n in range(4):
        assert (await api.signed(key, "POST", "/v1/jobs", {"payload": {"n": n}})).status == 201
    first = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 2, "wait_ms": 0})
    a, b = first.body["jobs"]
    assert "results" not in first.body  # nothing carried, nothing answered
    # At the cap: only the acknowledgements make room for this lease's jobs.
    body = {
        "worker_id": "w",
        "max_jobs": 2,
        "wait_ms": 0,
        "complete": [{"id": a["id"], "lease_token": a["lease_token"], "result": {"ok": 1}}],
        "fail": [
            {"id": b["id"], "lease_token": b["lease_token"] + 1000, "error": "stale"},
            {"id": "987654321", "lease_token": 1, "error": "unknown"},
        ],
    }
    second = await api.signed(key, "POST", "/v1/workers/lease", body)
    assert second.status == 200
    assert second.body["results"] == [
        {"id": a["id"], "status": 200, "state": "succeeded"},
        {"id": b["id"], "status": 409, "state": "running"},
        {"id": "987654321", "status": 404, "state": None},
    ]
    assert len(second.body["jobs"]) == 1  # a's place under the cap; b still runs
    done = await api.signed(key, "GET", f"/v1/jobs/{a['id']}")
    assert done.body["state"] == "succeeded" and done.body["result"] == {"ok": 1}


async def test_a_lease_with_a_bad_acknowledgement_is_refused_whole(api: Api) -> None:
    key = await api.tenant("acks-bad")
    assert (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).status == 201
    bad = {"worker_id": "w", "wait_ms": 0, "complete": [{"id": "x1", "lease_token": 1}]}
    r = await api.signed(key, "POST", "/v1/workers/lease", bad)
    assert r.status == 422 and r.body["field"] == "complete[0].id"
    still = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0})
    assert len(still.body["jobs"]) == 1  # the refused request leased nothing
