"""The gateway against its own OpenAPI document: schemathesis generates requests from the
document served at /schema/openapi.json, each one signed with a real tenant key (or carrying the
operator's token), sends them to `orchestrator serve`, and checks every answer against the
document: never a 500, a documented status, a documented content type, a body its schema
accepts, the documented headers."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.serialization import encode_json
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import db
from core import Settings, signing
from gateway import create_app

from .support import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ADMIN_TOKEN = "contract-admin-" + secrets.token_hex(8)
TENANT = "contract"
# Long-polls answer at once when there is something to return, else after wait_ms: capped so the
# run spends its time on many requests rather than on waiting.
MAX_WAIT_MS = 20
LEASE = "/v1/workers/lease"
REQUEST_TIMEOUT = 10.0
# An event stream never ends: it is read for this long, then judged on what arrived.
STREAM_SECONDS = 0.5
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass(frozen=True)
class Served:
    url: str
    api_key: str
    # The statuses each operation answered, "METHOD /path" -> statuses.
    seen: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


class SignWith(requests.auth.AuthBase):
    """Signs the request exactly as it goes out: the path and query as encoded, the body's bytes."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        raw = body.encode() if isinstance(body, str) else body
        assert isinstance(raw, bytes), "streamed bodies are not generated"
        assert r.method is not None
        r.headers.update(signing.sign_headers(self.api_key, r.method, r.path_url, raw))
        return r


async def _database(pg_server: str, template: str, name: str, *, drop: bool) -> None:
    conn = await db.connect(pg_server)
    try:
        if drop:
            await db.database_drop(conn, name)
        else:
            await db.database_create(conn, name, template)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def served(pg_server: str, template_db: str) -> Iterator[Served]:
    """One `orchestrator serve` on a database of its own for the whole module, with a tenant
    that has a job to look at."""
    name = f"orch_contract_{uuid.uuid4().hex[:10]}"
    asyncio.run(_database(pg_server, template_db, name, drop=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    gw = GatewayProcess(db.with_database(pg_server, name), ADMIN_TOKEN, env=env)
    try:
        asyncio.run(gw.wait_ready())
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = requests.post(f"{gw.url}/v1/admin/tenants", json={"id": TENANT}, headers=admin, timeout=10)
        assert r.status_code == 201, r.text
        key: str = r.json()["api_key"]
        r = requests.post(f"{gw.url}/v1/jobs", json={"queue": "emails"}, auth=SignWith(key), timeout=10)
        assert r.status_code == 201, r.text
        run = Served(gw.url, key)
        yield run
        # Requests that never got past authentication would prove nothing: each operation
        # exercised answered something else at least once.
        unauthenticated = sorted(op for op, statuses in run.seen.items() if op in DOCUMENTED and statuses <= {401})
        assert not unauthenticated, unauthenticated
    finally:
        output = gw.stop()
        asyncio.run(_database(pg_server, template_db, name, drop=True))
    assert "Traceback" not in output, output


def _document() -> dict[str, Any]:
    """The document the gateway serves (tests/test_openapi.py checks they are the same), built
    without a server so that pytest can make one test of each operation when it collects."""
    app = create_app(Settings(database_url="postgresql://127.0.0.1:9/never-connected", admin_token=ADMIN_TOKEN))
    doc: dict[str, Any] = msgspec.json.decode(encode_json(app.openapi_schema.to_schema()))
    return doc


DOCUMENT = _document()
DOCUMENTED = {f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item}
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "request-timeout": REQUEST_TIMEOUT,
            "generation": {"mode": "all", "max-examples": 8, "database": "none", "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


def _cap_waits(case: Any) -> None:
    if isinstance(case.query, dict) and isinstance(case.query.get("wait_ms"), int):
        case.query["wait_ms"] = min(case.query["wait_ms"], MAX_WAIT_MS)
    if isinstance(case.body, dict) and isinstance(case.body.get("wait_ms", 0), int) and case.path == LEASE:
        # Its default is 30 s.
        case.body["wait_ms"] = min(case.body.get("wait_ms", MAX_WAIT_MS), MAX_WAIT_MS)


@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: Any, served: Served) -> None:
    _cap_waits(case)
    kwargs: dict[str, Any] = {"timeout": REQUEST_TIMEOUT}
    if case.path.startswith("/v1/admin"):
        kwargs["headers"] = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    elif case.path.startswith("/v1/"):
        kwargs["auth"] = SignWith(served.api_key)
    if case.path == "/v1/events/stream":
        kwargs["timeout"] = STREAM_SECONDS
    response = case.call_and_validate(base_url=served.url, checks=CHECKS, **kwargs)
    served.seen[f"{case.method} {case.path}"].add(response.status_code)
