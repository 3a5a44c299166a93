"""Litestar's OpenAPI document describes every route with its msgspec types."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import msgspec
import pytest
from litestar.serialization import encode_json
from openapi_spec_validator import validate

from core import Settings, wire
from gateway import create_app

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


# --- the document tells the truth ----------------------------------------------------------

PROBLEM = "application/problem+json"
SIGNED_REQUIREMENT: list[dict[str, list[str]]] = [{"keyId": [], "timestamp": [], "nonce": [], "signature": []}]
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics"}
# Operations that answer 409 (a state, lease or name conflict) and 410 (a pruned event cursor).
CONFLICTS = {
    ("post", "/v1/jobs"),
    ("post", "/v1/jobs/batch"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("post", "/v1/jobs/{job_id}/retry"),
    ("post", "/v1/jobs/{job_id}/heartbeat"),
    ("post", "/v1/jobs/{job_id}/complete"),
    ("post", "/v1/jobs/{job_id}/fail"),
    ("post", "/v1/consumers"),
    ("post", "/v1/schedules"),
    ("patch", "/v1/schedules/{name}"),
    ("post", "/v1/admin/tenants"),
}
GONE = {("get", "/v1/events"), ("get", "/v1/events/stream"), ("get", "/v1/consumers/{name}/events")}
# The main operations' examples, and the wire types they must decode into.
EXAMPLE_TYPES: dict[tuple[str, str], tuple[type[Any] | None, type[Any]]] = {
    ("post", "/v1/jobs"): (wire.JobSubmit, wire.Job),
    ("post", "/v1/jobs/batch"): (wire.JobBatchSubmit, wire.JobBatch),
    ("get", "/v1/jobs/{job_id}"): (None, wire.Job),
    ("post", "/v1/workers/lease"): (wire.LeaseRequest, wire.LeaseResponse),
    ("post", "/v1/workers/ack"): (wire.Ack, wire.AckResponse),
    ("post", "/v1/jobs/{job_id}/complete"): (wire.Complete, wire.Job),
    ("post", "/v1/jobs/{job_id}/heartbeat"): (wire.Heartbeat, wire.HeartbeatResponse),
    ("post", "/v1/jobs/{job_id}/fail"): (wire.Fail, wire.Job),
}


def _built_document() -> dict[str, Any]:
    app = create_app(Settings(database_url="postgresql://127.0.0.1:9/never-connected", admin_token="t"))
    doc: dict[str, Any] = msgspec.json.decode(encode_json(app.openapi_schema.to_schema()))
    return doc


DOC = _built_document()
OPERATIONS = [(m, p, op) for p, item in DOC["paths"].items() for m, op in item.items()]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        section, name = node["$ref"].removeprefix("#/components/").split("/")
        node = DOC["components"][section][name]
    return node


def _statuses(op: dict[str, Any]) -> set[int]:
    return {int(s) for s in op["responses"]}


def _param_places(op: dict[str, Any]) -> set[str]:
    return {p["in"] for p in op.get("parameters", [])}


async def test_the_served_document_is_valid_openapi_and_the_one_built(api: Api) -> None:
    r = await api.admin("GET", "/schema/openapi.json")
    assert r.status == 200
    validate(r.body)
    assert r.body == DOC


def test_security_schemes_are_the_signing_headers_and_the_bearer_tokens() -> None:
    schemes = DOC["components"]["securitySchemes"]
    headers = {name: (s["type"], s["in"], s["name"]) for name, s in schemes.items() if s["type"] == "apiKey"}
    assert headers == {
        "keyId": ("apiKey", "header", "X-Key-Id"),
        "timestamp": ("apiKey", "header", "X-Timestamp"),
        "nonce": ("apiKey", "header", "X-Nonce"),
        "signature": ("apiKey", "header", "X-Signature"),
    }
    assert schemes["adminToken"]["type"] == "http" and schemes["adminToken"]["scheme"] == "bearer"
    assert schemes["metricsToken"]["type"] == "http" and schemes["metricsToken"]["scheme"] == "bearer"
    assert all(s.get("description") for s in schemes.values())
    assert "HMAC-SHA256" in schemes["signature"]["description"]


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p, _ in OPERATIONS])
def test_each_operation_asks_for_the_credential_its_guard_checks(method: str, path: str, op: dict[str, Any]) -> None:
    if path == "/metrics":
        assert op["security"] == [{}, {"metricsToken": []}]  # open unless ORCH_METRICS_TOKEN is set
    elif path in OPEN_ROUTES:
        assert op.get("security", []) == []
    elif path.startswith("/v1/admin"):
        assert op["security"] == [{"adminToken": []}]
    else:
        assert op["security"] == SIGNED_REQUIREMENT


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p, _ in OPERATIONS])
def test_each_operation_documents_the_errors_it_can_send(method: str, path: str, op: dict[str, Any]) -> None:
    statuses = _statuses(op)
    has_body = "requestBody" in op
    if path in OPEN_ROUTES:
        expected = {"/healthz": set(), "/readyz": {503}, "/metrics": {401}}[path]
    elif path.startswith("/v1/admin"):
        expected = {401, 403, 503}
    else:
        expected = {401, 403, 413, 503}
    if has_body:
        expected |= {400, 413, 415, 422}
    if "query" in _param_places(op):
        expected.add(422)
    if "path" in _param_places(op):
        expected.add(404)
    if (method, path) in CONFLICTS:
        expected.add(409)
    if (method, path) in GONE:
        expected.add(410)
    assert expected <= statuses, expected - statuses
    assert 500 not in statuses
    for status in statuses - expected:
        # Beyond the classes: only documented extras (a second success, a 404 or 409 of its own).
        assert status < 400 or status in {404, 409, 422}, (status, op["responses"][str(status)])


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p, _ in OPERATIONS])
def test_errors_are_documented_as_the_problem_documents_sent(method: str, path: str, op: dict[str, Any]) -> None:
    for key, response in op["responses"].items():
        if int(key) < 400:
            continue
        resolved = _resolve(response)
        assert resolved["description"]
        if (path, key) == ("/readyz", "503"):
            assert set(resolved["content"]) == {"application/json"}  # its 200 body, saying what is down
        else:
            assert set(resolved["content"]) == {PROBLEM}, (key, resolved)
            media = resolved["content"][PROBLEM]
            assert media["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert media["example"]["status"] == int(key)
        if key == "503":
            assert "Retry-After" in resolved["headers"]
    # Litestar's own validation error shape ({status_code, detail, extra}) is never sent.
    assert '"status_code"' not in msgspec.json.encode(op["responses"]).decode()


def test_the_problem_schema_is_core_wire_problem() -> None:
    problem = DOC["components"]["schemas"]["Problem"]
    fields = {"type", "title", "status", "detail", "field"}
    assert set(problem["properties"]) == set(wire.Problem.__struct_fields__) == fields
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


async def test_a_problem_as_sent_matches_the_documented_schema(api: Api) -> None:
    key = await api.tenant("openapi-problem")
    sent = [
        (await api.signed(key, "GET", "/v1/jobs/1"), 404),
        (await api.signed(key, "POST", "/v1/jobs", body=b"{"), 400),
        (await api.signed(key, "POST", "/v1/jobs", {"priority": 5000}), 422),
        (await api.admin("GET", "/v1/admin/tenants", token="wrong"), 401),
    ]
    schema = DOC["components"]["schemas"]["Problem"]
    for reply, status in sent:
        assert reply.status == status, reply.body
        assert reply.headers["content-type"].startswith(PROBLEM)
        assert set(schema["required"]) <= set(reply.body) <= set(schema["properties"])
        assert msgspec.convert(reply.body, wire.Problem).status == status


def test_a_204_has_no_body() -> None:
    no_content = [(m, p, op["responses"]["204"]) for m, p, op in OPERATIONS if "204" in op["responses"]]
    assert {m for m, _, _ in no_content} == {"delete"}
    assert len(no_content) >= 7
    for _, _, response in no_content:
        assert "content" not in response
    deletes = [(m, p) for m, p, op in OPERATIONS if m == "delete" and "204" not in op["responses"]]
    assert deletes == [("delete", "/v1/admin/tenants/{tenant_id}")]  # answers what it deleted


@pytest.mark.parametrize(("method", "path"), list(EXAMPLE_TYPES), ids=[f"{m.upper()} {p}" for m, p in EXAMPLE_TYPES])
def test_main_operations_have_examples_the_wire_types_accept(method: str, path: str) -> None:
    op = DOC["paths"][path][method]
    request_type, response_type = EXAMPLE_TYPES[(method, path)]
    if request_type is not None:
        examples = op["requestBody"]["content"]["application/json"]["examples"]
        for example in examples.values():
            # Strictly, as the gateway decodes a body.
            msgspec.json.decode(msgspec.json.encode(example["value"]), type=request_type)
    examples = [
        example
        for status, response in op["responses"].items()
        if status.startswith("2")
        for example in response["content"]["application/json"].get("examples", {}).values()
    ]
    assert examples
    for example in examples:
        msgspec.json.decode(msgspec.json.encode(example["value"]), type=response_type)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
async def test_the_schema_page_loads_everything_from_the_gateway(api: Api, page: str) -> None:
    r = await api.admin("GET", page)
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/html")
    text = r.raw.decode()
    assert "http://" not in text and "https://" not in text, "the page names another host"
    links = _Links()
    links.feed(text)
    spec = re.search(r"url: \"([^\"]+)\"", text)
    assert spec is not None
    urls = [*links.urls, spec.group(1)]
    assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("swagger-ui.css") for u in urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await api.admin("GET", url)
        assert asset.status == 200, url
        assert asset.raw, url
        if url.endswith(".css"):
            for ref in re.findall(rb"url\(\s*['\"]?([^'\")]+)", asset.raw):
                assert ref.startswith(b"data:"), (url, ref[:80])
        if url.endswith(".js"):
            assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    doc = await api.admin("GET", spec.group(1))
    assert doc.body == DOC
