"""Litestar's OpenAPI document describes every route with its msgspec types."""

from __future__ import annotations

import pytest

from .support import Api

pytestmark = pytest.mark.timeout(30)

ROUTES = {
    ("post", "/v1/jobs"): "JobSubmit",
    ("post", "/v1/jobs/batch"): "JobBatchSubmit",
    ("get", "/v1/jobs/{job_id}"): None,
    ("get", "/v1/jobs"): None,
    ("post", "/v1/jobs/{job_id}/heartbeat"): "Heartbeat",
    ("post", "/v1/jobs/{job_id}/complete"): "Complete",
    ("post", "/v1/jobs/{job_id}/fail"): "Fail",
    ("post", "/v1/workers/lease"): "LeaseRequest",
    ("post", "/v1/workers/ack"): "Ack",
    ("post", "/v1/admin/tenants"): "TenantCreate",
    ("get", "/v1/admin/tenants"): None,
    ("get", "/v1/admin/tenants/{tenant_id}"): None,
    ("patch", "/v1/admin/tenants/{tenant_id}"): "TenantPatch",
    ("post", "/v1/admin/tenants/{tenant_id}/keys"): None,
    ("delete", "/v1/admin/keys/{key_id}"): None,
    ("post", "/v1/admin/worker-keys"): None,
    ("post", "/v1/admin/reap"): None,
    ("get", "/healthz"): None,
    ("get", "/readyz"): None,
    ("get", "/metrics"): None,
}


async def test_openapi_document_covers_every_route(api: Api) -> None:
    r = await api.admin("GET", "/schema/openapi.json")
    assert r.status == 200
    doc = r.body
    paths = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert set(ROUTES) <= paths, set(ROUTES) - paths
    schemas = doc["components"]["schemas"]
    for (method, path), body_type in ROUTES.items():
        op = doc["paths"][path][method]
        if body_type is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith(body_type), (path, ref)
            assert schemas[ref.rsplit("/", 1)[1]]["properties"], body_type
    job = next(s for name, s in schemas.items() if name.endswith("Job") and not name.endswith("LeasedJob"))
    assert {"id", "tenant_id", "state", "attempts", "run_at", "idempotency_key"} <= set(job["properties"])
    lease = next(s for name, s in schemas.items() if name.endswith("LeaseRequest"))
    assert lease["properties"]["max_jobs"]["maximum"] == 100
