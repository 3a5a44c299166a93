"""Hostile input: every route answers malformed, oversized and strange requests with a 4xx
problem document (RFC 9457), never a 500, and the server goes on serving normally afterwards.

One `orchestrator serve` process serves the whole module; requests go over a plain HTTP/1.1
client that sends bytes exactly as given (odd header bytes, duplicate headers, chunked bodies).
The routes come from the app's own OpenAPI document, so a new route is covered without an edit.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import os
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import db
from core import Settings, signing
from gateway import create_app

from .support import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "hostile-admin-" + secrets.token_hex(8)
MAX_BODY = 131072
HEALTH_QUEUE = "hostile-health"
PARKED_QUEUE = "hostile-parked"
NOWHERE_ID = "9223372036854775807"  # a well-formed id that names nothing
PROBLEM_TYPE = "application/problem+json"


def _openapi() -> dict[str, Any]:
    """The OpenAPI document the server serves, built from the app without starting it."""
    app = create_app(Settings(database_url="postgresql://127.0.0.1:9/never-connected", admin_token=ADMIN_TOKEN))
    doc: dict[str, Any] = app.openapi_schema.to_schema()
    return doc


DOC = _openapi()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
OPERATIONS: list[tuple[str, str]] = sorted((m.upper(), p) for p, ops in DOC["paths"].items() for m in ops)
OPS_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def auth_of(path: str) -> str:
    if path in OPS_ROUTES:
        return "none"
    return "admin" if path.startswith("/v1/admin") else "signed"


def operation(method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = DOC["paths"][path][method.lower()]
    return op


def body_schema(method: str, path: str) -> dict[str, Any] | None:
    content = operation(method, path).get("requestBody", {}).get("content", {})
    schema: dict[str, Any] | None = content.get("application/json", {}).get("schema")
    return schema


BODY_OPERATIONS = [(m, p) for m, p in OPERATIONS if body_schema(m, p) is not None]


def j(value: Any) -> bytes:
    """JSON as a client would send it: escapes (\\u0000 too) in ASCII."""
    return json.dumps(value).encode()


def nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


# --- a client that sends exactly what it is given ----------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def describe(self) -> str:
        return f"{self.status} [{self.content_type}] {self.body[:400]!r}"


Headers = list[tuple[str, bytes]]


def send(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, bytes]] = (),
    body: bytes | None = None,
    *,
    chunks: Iterable[bytes] | None = None,
    timeout: float = 20.0,
) -> Answer:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        try:
            if chunks is not None:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for piece in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) before reading all of the body
        resp = conn.getresponse()
        got = {k.lower(): v for k, v in resp.getheaders()}
        # A stream that started is not read: it would go on until the server stops.
        data = b"" if got.get("content-type", "").startswith("text/event-stream") else resp.read()
        return Answer(resp.status, got, data, time.monotonic() - t0)
    finally:
        conn.close()


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class Server:
    gw: GatewayProcess
    port: int
    tenant: str  # the API key of the tenant that signs
    tenant_id: str
    worker: str  # a shared worker key
    victim: str  # a tenant the operator routes act on
    job_id: str  # a ready job of `tenant` that nothing leases
    webhook_id: str
    consumer: str
    schedule: str
    queue: str = "q1"

    def signed_headers(self, method: str, target: str, body: bytes, key: str | None = None) -> Headers:
        return [(k, _bytes(v)) for k, v in signing.sign_headers(key or self.tenant, method, target, body).items()]

    def signed(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        key: str | None = None,
        content_type: str | bytes | None = "application/json",
        extra: Sequence[tuple[str, bytes]] = (),
        timeout: float = 20.0,
    ) -> Answer:
        headers = self.signed_headers(method, target, body or b"", key)
        if content_type is not None and body is not None:
            headers.append(("Content-Type", _bytes(content_type)))
        return send(self.port, method, target, [*headers, *extra], body, timeout=timeout)

    def admin(self, method: str, target: str, body: bytes | None = None) -> Answer:
        headers: Headers = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
        if body is not None:
            headers.append(("Content-Type", b"application/json"))
        return send(self.port, method, target, headers, body)

    def fill(self, path: str) -> str:
        """A route's template with values that name this module's resources."""
        name = self.schedule if path.startswith("/v1/schedules") else self.consumer
        return (
            path.replace("{job_id}", self.job_id)
            .replace("{webhook_id}", self.webhook_id)
            .replace("{name}", name)
            .replace("{tenant_id}", self.victim)
            .replace("{queue}", self.queue)
            .replace("{key_id}", "tk_0000000000000000")
        )

    def server_errors(self, answer: Answer | None = None) -> str:
        """What the server logged about the request's unhandled error (its traceback), for a failure message."""
        rid = None if answer is None else answer.headers.get("x-request-id")
        for line in reversed(self.gw.output().splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or "exc" not in record:
                continue
            if rid is None or record.get("request_id") == rid:
                exc = "\n".join(str(record["exc"]).splitlines()[-12:])
                return f"\nserver log of request {rid}: {record.get('msg')}\n{exc}"
        return f"\n(no traceback logged for request {rid}: the log summarises repeated errors)"


def expect_problem(
    server: Server,
    answer: Answer,
    what: str,
    status: int | tuple[int, ...] | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """A 4xx (of `status`, when given) with a problem document (naming `field`, when given)."""
    context = f"{what}\n-> {answer.describe()}"
    if answer.status >= 500:
        context += server.server_errors(answer)
    assert 400 <= answer.status < 500, context
    if status is not None:
        assert answer.status in (status if isinstance(status, tuple) else (status,)), context
    assert answer.content_type.startswith(PROBLEM_TYPE), context
    doc = json.loads(answer.body)
    assert isinstance(doc, dict), context
    for key, kind in (("type", str), ("title", str), ("status", int), ("detail", str)):
        assert isinstance(doc.get(key), kind), (key, context)
    assert doc["status"] == answer.status, context
    if field is not None:
        assert doc.get("field") == field, context
    return doc


def expect_no_server_error(server: Server, answer: Answer, what: str) -> None:
    """Not a 5xx; a 4xx is a problem document; a 2xx with a body is JSON where JSON is declared."""
    if answer.status >= 400:
        expect_problem(server, answer, what)
        return
    context = f"{what}\n-> {answer.describe()}"
    assert 200 <= answer.status < 300, context
    if answer.status != 204 and answer.content_type.startswith("application/json"):
        json.loads(answer.body)


def expect_healthy(server: Server) -> None:
    r = send(server.port, "GET", "/readyz")
    assert r.status == 200, r.describe() + server.server_errors(r)


def round_trip(server: Server) -> None:
    """A normal submit, lease and complete."""
    marker = uuid.uuid4().hex
    r = server.signed("POST", "/v1/jobs", j({"queue": HEALTH_QUEUE, "payload": {"marker": marker}}))
    assert r.status == 201, r.describe() + server.server_errors(r)
    job_id = json.loads(r.body)["id"]
    lease = {"worker_id": "health", "queues": [HEALTH_QUEUE], "max_jobs": 100, "wait_ms": 5000}
    r = server.signed("POST", "/v1/workers/lease", j(lease))
    assert r.status == 200, r.describe() + server.server_errors(r)
    tokens = {job["id"]: job["lease_token"] for job in json.loads(r.body)["jobs"]}
    assert job_id in tokens, r.describe()
    for leased, token in tokens.items():
        r = server.signed("POST", f"/v1/jobs/{leased}/complete", j({"lease_token": token, "result": {"ok": True}}))
        assert r.status == 200, r.describe() + server.server_errors(r)
        assert json.loads(r.body)["state"] == "succeeded"


# --- the server ---------------------------------------------------------------------------------


async def _database(op: str, dsn: str, name: str, template: str | None = None) -> None:
    conn = await db.connect(dsn)
    try:
        if op == "create":
            await db.database_create(conn, name, template)
        else:
            await db.database_drop(conn, name)
    finally:
        await conn.close()


def _created(answer: Answer, what: str) -> Any:
    assert answer.status in (200, 201), f"{what}: {answer.describe()}"
    return json.loads(answer.body)


@pytest.fixture(scope="module")
def server(pg_server: str, template_db: str) -> Iterator[Server]:
    name = f"orch_hostile_{uuid.uuid4().hex[:10]}"
    asyncio.run(_database("create", pg_server, name, template_db))
    data_dir = tempfile.TemporaryDirectory(prefix="orch-hostile-")
    env = {
        **os.environ,
        "ORCH_MAX_BODY_BYTES": str(MAX_BODY),
        "ORCH_DATA_DIR": data_dir.name,
        "ORCH_LOG_FORMAT": "json",
        "ORCH_ACCESS_LOG": "off",
        # Webhooks here point at a closed loopback port, never anywhere else.
        "ORCH_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    }
    gw = GatewayProcess(db.with_database(pg_server, name), ADMIN_TOKEN, env=env)
    try:
        asyncio.run(gw.wait_ready())
        port = gw.port
        admin: Headers = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode()), ("Content-Type", b"application/json")]
        tenant = _created(send(port, "POST", "/v1/admin/tenants", admin, j({"id": "hostile"})), "tenant")
        _created(send(port, "POST", "/v1/admin/tenants", admin, j({"id": "victim"})), "victim tenant")
        worker = _created(send(port, "POST", "/v1/admin/worker-keys", admin[:1], b""), "worker key")
        s = Server(gw, port, tenant["api_key"], "hostile", worker["api_key"], "victim", "", "", "c1", "s1")
        s.job_id = _created(s.signed("POST", "/v1/jobs", j({"queue": PARKED_QUEUE})), "job")["id"]
        s.webhook_id = _created(
            s.signed("POST", "/v1/webhooks", j({"url": f"http://127.0.0.1:{free_port()}/hook"})), "webhook"
        )["id"]
        _created(s.signed("POST", "/v1/consumers", j({"name": s.consumer})), "consumer")
        schedule = {"name": s.schedule, "cron": "0 0 1 1 *", "paused": True, "queue": PARKED_QUEUE}
        _created(s.signed("POST", "/v1/schedules", j(schedule)), "schedule")
        yield s
    finally:
        gw.stop()
        data_dir.cleanup()
        asyncio.run(_database("drop", pg_server, name))


# --- 1. every route, with malformed credentials --------------------------------------------------

Bend = Callable[[Headers], Headers]
KEY, TS, NONCE, SIG = signing.HEADER_KEY_ID, signing.HEADER_TIMESTAMP, signing.HEADER_NONCE, signing.HEADER_SIGNATURE
SIGNING = (KEY, TS, NONCE, SIG)


def put(name: str, value: bytes | Callable[[], bytes]) -> Bend:
    def bend(headers: Headers) -> Headers:
        v = value() if callable(value) else value
        return [(k, v if k == name else old) for k, old in headers]

    return bend


def drop(*names: str) -> Bend:
    return lambda headers: [(k, v) for k, v in headers if k not in names]


def twice(name: str, extra: bytes, *, first: bool) -> Bend:
    def bend(headers: Headers) -> Headers:
        out: Headers = []
        for k, v in headers:
            out.extend([(k, extra), (k, v)] if k == name and first else [(k, v), (k, extra)] if k == name else [(k, v)])
        return out

    return bend


def _now_in(digits: str) -> bytes:
    return str(int(time.time())).translate(str.maketrans("0123456789", digits)).encode()


def _admin_instead(headers: Headers) -> Headers:
    return [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]


SIGNED_BENDS: list[tuple[str, Bend, int | None]] = [
    ("no-signing-headers", drop(*SIGNING), 401),
    *[(f"no-{h.lower()}", drop(h), 401) for h in SIGNING],
    ("timestamp-400-nines", put(TS, b"9" * 400), 401),
    ("timestamp-5000-nines", put(TS, b"9" * 5000), 401),
    ("timestamp-superscript-two", put(TS, "²".encode()), 401),
    ("timestamp-superscript-123", put(TS, "¹²³".encode()), 401),
    ("timestamp-space-12", put(TS, b" 12"), 401),
    ("timestamp-minus-one", put(TS, b"-1"), 401),
    ("timestamp-1e3", put(TS, b"1e3"), 401),
    ("timestamp-now-arabic-indic", put(TS, lambda: _now_in("٠١٢٣٤٥٦٧٨٩")), 401),
    ("timestamp-now-fullwidth", put(TS, lambda: _now_in("".join(chr(0xFF10 + d) for d in range(10)))), 401),
    ("timestamp-now-plus-sign", put(TS, lambda: b"+" + _now_in("0123456789")), 401),
    ("timestamp-now-fraction", put(TS, lambda: _now_in("0123456789") + b".5"), 401),
    ("timestamp-latin-1-byte", put(TS, b"\xff"), 401),
    ("nonce-10000-chars", put(NONCE, b"n" * 10_000), 401),
    ("nonce-non-latin-1", put(NONCE, "☃".encode() * 8), 401),
    ("nonce-15-chars", put(NONCE, b"n" * 15), 401),
    ("key-id-5000-chars", put(KEY, b"k" * 5000), 401),
    ("key-id-non-latin-1", put(KEY, "ключ".encode()), 401),
    ("key-id-unknown", put(KEY, b"tk_0000000000000000"), 401),
    ("signature-not-hex", put(SIG, b"zz" * 32), 401),
    ("signature-non-latin-1", put(SIG, "签名".encode() * 10), 401),
    ("signature-5000-chars", put(SIG, b"a" * 5000), 401),
    ("timestamp-twice-garbage-first", twice(TS, "²".encode(), first=True), None),
    ("timestamp-twice-garbage-last", twice(TS, "²".encode(), first=False), None),
    ("key-id-twice", twice(KEY, b"tk_0000000000000000", first=True), None),
    ("admin-token-instead", _admin_instead, 401),
]


def _bearer(value: bytes) -> Bend:
    return lambda headers: [("Authorization", value)]


def _signed_instead(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k in SIGNING]


ADMIN_BENDS: list[tuple[str, Bend, int | None]] = [
    ("no-authorization", lambda headers: [], 401),
    ("bearer-without-token", _bearer(b"Bearer"), 401),
    ("bearer-empty-token", _bearer(b"Bearer "), 401),
    ("bearer-wrong-token", _bearer(b"Bearer nope"), 401),
    ("bearer-5000-chars", _bearer(b"Bearer " + b"t" * 5000), 401),
    ("bearer-non-latin-1", _bearer("Bearer ключ".encode()), 401),
    ("bearer-latin-1-byte", _bearer(b"Bearer \xff\xfe"), 401),
    ("bearer-token-twice-spaced", _bearer(f"Bearer  {ADMIN_TOKEN}".encode()), 401),
    ("basic-scheme", _bearer(b"Basic " + base64.b64encode(f"admin:{ADMIN_TOKEN}".encode())), 401),
    ("token-without-scheme", _bearer(ADMIN_TOKEN.encode()), 401),
    ("tenant-signature-instead", _signed_instead, 403),
    (
        "authorization-twice",
        lambda headers: [("Authorization", b"Bearer nope"), ("Authorization", f"Bearer {ADMIN_TOKEN}".encode())],
        None,
    ),
]

OPS_BENDS: list[tuple[str, Bend, int | None]] = [
    ("odd-signing-headers", lambda headers: [(TS, b"9" * 5000), (KEY, "ключ".encode()), (NONCE, b"\xff")], 200),
    ("authorization-garbage", _bearer("Bearer ключ".encode() + b"\xff"), 200),
    ("request-id-5000-chars", lambda headers: [("X-Request-Id", b"r" * 5000)], 200),
    ("request-id-non-latin-1", lambda headers: [("X-Request-Id", "запрос".encode())], 200),
    ("traceparent-garbage", lambda headers: [("traceparent", "00-☃-☃-01".encode() * 100)], 200),
]


def _header_cases() -> Iterator[Any]:
    bends = {"signed": SIGNED_BENDS, "admin": ADMIN_BENDS, "none": OPS_BENDS}
    for method, path in OPERATIONS:
        for name, bend, status in bends[auth_of(path)]:
            yield pytest.param(method, path, bend, status, id=f"{method} {path} {name}")


def _nowhere(path: str) -> str:
    """The route with ids and names that match nothing: a request that got through changes nothing."""
    return re.sub(r"\{[a-z_]+\}", lambda m: NOWHERE_ID if m.group(0).endswith("id}") else "nothing-here", path)


@pytest.mark.parametrize(("method", "path", "bend", "status"), list(_header_cases()))
def test_malformed_credentials(server: Server, method: str, path: str, bend: Bend, status: int | None) -> None:
    target = _nowhere(path)
    body = b"{}" if body_schema(method, path) is not None else None
    signed = server.signed_headers(method, target, body or b"")
    headers = bend(signed)
    if body is not None:
        headers.append(("Content-Type", b"application/json"))
    r = send(server.port, method, target, headers, body)
    what = f"{method} {target} with {headers!r}"[:600]
    if status == 200:
        assert r.status == 200, f"{what}\n-> {r.describe()}"
    elif status is None:
        expect_no_server_error(server, r, what)
    else:
        expect_problem(server, r, what, status)
    expect_healthy(server)


def _method_cases() -> Iterator[Any]:
    for path in sorted({p for _, p in OPERATIONS}):
        allowed = {m for m, p in OPERATIONS if p == path}
        method = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in allowed)
        yield pytest.param(method, path, id=f"{method} {path}")


@pytest.mark.parametrize(("method", "path"), list(_method_cases()))
def test_method_not_allowed(server: Server, method: str, path: str) -> None:
    target = server.fill(path)
    r = server.signed(method, target, b"{}")
    expect_problem(server, r, f"{method} {target}", 405)


@pytest.mark.parametrize(
    "target",
    ["/v1/%C2%B9", "/v1/jobs/1/%00", "/v1/jobs/1/nothing", "/" + "a" * 5000, "/v1/%FF%FE", "/v1/jobs/1/cancel/x"],
    ids=["superscript", "nul-segment", "unknown-action", "5000-chars", "latin-1-bytes", "extra-segment"],
)
def test_unknown_paths(server: Server, target: str) -> None:
    r = server.signed("GET", target)
    expect_problem(server, r, f"GET {target}", 404)


def test_still_serves_after_malformed_credentials(server: Server) -> None:
    round_trip(server)


# --- 2. ids, names, cursors and counts that are not what they look like -------------------------

BAD_IDS = [
    ("superscript-one", "%C2%B9"),
    ("superscript-two", "%C2%B2"),
    ("arabic-indic-three", "%D9%A3"),
    ("fullwidth-one", "%EF%BC%91"),
    ("devanagari-one", "%E0%A5%A7"),
    ("leading-space", "%201"),
    ("trailing-space", "1%20"),
    ("plus-one", "%2B1"),
    ("minus-one", "-1"),
    ("underscore", "1_0"),
    ("hex", "0x1"),
    ("exponent", "1e3"),
    ("decimal", "1.0"),
    ("two-to-the-63", "9223372036854775808"),
    ("twenty-digits", "9" * 20),
    ("400-nines", "9" * 400),
    ("nul", "%00"),
    ("digit-then-nul", "1%00"),
    ("latin-1-byte", "%FF"),
    ("overlong-utf8-one", "%C0%B1"),
    ("zero-width-space", "%E2%80%8B1"),
    ("surrogate-utf8", "%ED%A0%80"),
    ("trailing-newline", "1%0A"),
]
BAD_NAMES = [
    ("superscript-one", "%C2%B9"),
    ("nul", "%00"),
    ("name-then-nul", "a%00"),
    ("latin-1-byte", "%FF"),
    ("overlong-utf8-slash", "%C0%AF"),
    ("surrogate-utf8", "%ED%A0%80"),
    ("snowman", "%E2%98%83"),
    ("65-chars", "a" * 65),
    ("5000-chars", "a" * 5000),
    ("leading-dash", "-a"),
    ("space", "a%20b"),
    ("dot", "."),
    ("dot-dot", ".."),
    ("trailing-newline", "q1%0A"),
]
ID_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/jobs/{}", None),
    ("POST", "/v1/jobs/{}/cancel", None),
    ("POST", "/v1/jobs/{}/retry", None),
    ("POST", "/v1/jobs/{}/complete", {"lease_token": 1}),
    ("POST", "/v1/jobs/{}/heartbeat", {"lease_token": 1}),
    ("POST", "/v1/jobs/{}/fail", {"lease_token": 1, "error": "x"}),
    ("GET", "/v1/webhooks/{}", None),
    ("DELETE", "/v1/webhooks/{}", None),
    ("POST", "/v1/webhooks/{}/resume", None),
]
NAME_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/consumers/{}", None),
    ("DELETE", "/v1/consumers/{}", None),
    ("GET", "/v1/consumers/{}/events", None),
    ("POST", "/v1/consumers/{}/ack", {"cursor": "1-1"}),
    ("POST", "/v1/queues/{}/pause", None),
    ("POST", "/v1/queues/{}/resume", None),
    ("GET", "/v1/queues/{}/retry-policy", None),
    ("PUT", "/v1/queues/{}/retry-policy", {}),
    ("DELETE", "/v1/queues/{}/retry-policy", None),
    ("GET", "/v1/queues/{}/retention", None),
    ("PUT", "/v1/queues/{}/retention", {"succeeded_seconds": 60}),
    ("DELETE", "/v1/queues/{}/retention", None),
    ("GET", "/v1/schedules/{}", None),
    ("PATCH", "/v1/schedules/{}", {}),
    ("DELETE", "/v1/schedules/{}", None),
]
ADMIN_NAME_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/admin/tenants/{}", None),
    ("PATCH", "/v1/admin/tenants/{}", {}),
    ("POST", "/v1/admin/tenants/{}/keys", None),
    ("POST", "/v1/admin/tenants/{}/queues/q1/pause", None),
    ("POST", "/v1/admin/tenants/victim/queues/{}/pause", None),
    ("POST", "/v1/admin/tenants/victim/queues/{}/resume", None),
    ("DELETE", "/v1/admin/keys/{}", None),
]


def _id_cases() -> Iterator[Any]:
    for method, template, body in ID_ROUTES:
        for name, value in BAD_IDS:
            yield pytest.param("signed", method, template.format(value), body, id=f"{method} {template} {name}")
    for method, template, body in NAME_ROUTES:
        for name, value in BAD_NAMES:
            yield pytest.param("signed", method, template.format(value), body, id=f"{method} {template} {name}")
    for method, template, body in ADMIN_NAME_ROUTES:
        for name, value in BAD_NAMES:
            yield pytest.param("admin", method, template.format(value), body, id=f"{method} {template} {name}")


@pytest.mark.parametrize(("auth", "method", "target", "body"), list(_id_cases()))
def test_ids_and_names_that_name_nothing_are_404(
    server: Server, auth: str, method: str, target: str, body: Any
) -> None:
    raw = None if body is None else j(body)
    r = server.signed(method, target, raw) if auth == "signed" else server.admin(method, target, raw)
    expect_problem(server, r, f"{method} {target} {raw!r}", 404)
    expect_healthy(server)


BAD_EVENT_CURSORS = [
    ("superscript", "%C2%B9"),
    ("superscript-id", "1-%C2%B9"),
    ("superscript-xid", "%C2%B9-1"),
    ("arabic-indic", "%D9%A1-%D9%A1"),
    ("no-id", "1-"),
    ("no-xid", "-1"),
    ("three-parts", "1-1-1"),
    ("xid-over-64-bits", "99999999999999999999-1"),
    ("id-over-63-bits", "1-9223372036854775808"),
    ("largest-never-handed-out", "18446744073709551615-9223372036854775807"),
    ("nul", "1-1%00"),
    ("exponent", "1e3-1"),
    ("space", "%201-1"),
    ("5000-chars", "1-" + "1" * 5000),
    ("latin-1-byte", "%FF"),
    ("trailing-newline", "1-1%0A"),
]
BAD_JOB_CURSORS = [*BAD_IDS, ("empty", "")]


def _cursor_cases() -> Iterator[Any]:
    for name, value in BAD_JOB_CURSORS:
        yield pytest.param(f"/v1/jobs?after={value}", "after", id=f"GET /v1/jobs?after {name}")
    for name, value in BAD_EVENT_CURSORS:
        yield pytest.param(f"/v1/events?after={value}", "after", id=f"GET /v1/events?after {name}")
        yield pytest.param(f"/v1/events/stream?after={value}", "after", id=f"GET /v1/events/stream?after {name}")


@pytest.mark.parametrize(("target", "field"), list(_cursor_cases()))
def test_cursors_that_are_not_cursors_are_422(server: Server, target: str, field: str) -> None:
    r = server.signed("GET", target)
    expect_problem(server, r, f"GET {target}", 422, field)
    expect_healthy(server)


@pytest.mark.parametrize(
    "value",
    ["²".encode(), b"1-1\xff", "\uff11-\uff11".encode(), b"9" * 65, b"1-" + b"9" * 60, b" "],
    ids=["superscript", "latin-1-byte", "fullwidth", "65-nines", "62-chars", "blank"],
)
def test_last_event_id_that_is_not_a_cursor(server: Server, value: bytes) -> None:
    r = server.signed("GET", "/v1/events/stream", extra=[("Last-Event-ID", value)], timeout=5)
    if value == b" ":  # blank: no id given, the stream starts from the oldest event
        assert r.status == 200 and r.content_type.startswith("text/event-stream"), r.describe()
    else:
        expect_problem(server, r, f"Last-Event-ID: {value!r}", (400, 422))
    expect_healthy(server)


BAD_COUNTS = [
    ("exponent", "1e3"),
    ("superscript", "%C2%B9"),
    ("arabic-indic", "%D9%A3"),
    ("fullwidth", "%EF%BC%95"),
    ("empty", ""),
    ("minus-one", "-1"),
    ("leading-space", "%2012"),
    ("plus", "%2B1"),
    ("decimal", "1.0"),
    ("hex", "0x10"),
    ("ten-digits", "1000000000"),
    ("ten-to-the-12", "1000000000000"),
    ("400-nines", "9" * 400),
    ("latin-1-byte", "%FF"),
    ("nul", "%00"),
    ("repeated", "1&{name}=2"),
    ("repeated-same", "5&{name}=5"),
]
COUNT_ROUTES = {
    "wait_ms": ["/v1/jobs/{job_id}", "/v1/events", "/v1/consumers/{name}/events"],
    "limit": ["/v1/jobs", "/v1/events", "/v1/consumers/{name}/events"],
}
OUT_OF_RANGE = {"wait_ms": ["60001"], "limit": ["0", "1001"]}


def _count_cases() -> Iterator[Any]:
    for param, paths in COUNT_ROUTES.items():
        for path in paths:
            for name, value in [*BAD_COUNTS, *((f"out-of-range-{v}", v) for v in OUT_OF_RANGE[param])]:
                query = f"{param}={value.format(name=param)}"
                yield pytest.param(path, query, param, id=f"GET {path}?{param} {name}")
            yield pytest.param(path, param, param, id=f"GET {path}?{param} no-equals-sign")


@pytest.mark.parametrize(("path", "query", "field"), list(_count_cases()))
def test_counts_must_be_plain_digits_given_once(server: Server, path: str, query: str, field: str) -> None:
    target = f"{server.fill(path)}?{query}"
    r = server.signed("GET", target, timeout=10)
    expect_problem(server, r, f"GET {target}", 422, field)
    expect_healthy(server)


@pytest.mark.parametrize(
    "query",
    [
        "state=%00",
        "state=ready&state=dead",
        "queue=%00",
        "queue=%C2%B9",
        "queue=" + "q" * 5000,
        "after=1&after=2",
        "%FF=%FF",
        "after=%ZZ",
        "=&=&&",
        "limit=5&limit=5&wait_ms=0",
    ],
    ids=[
        "state-nul",
        "state-twice",
        "queue-nul",
        "queue-superscript",
        "queue-5000-chars",
        "after-twice",
        "latin-1-name-and-value",
        "bad-percent-escape",
        "empty-pairs",
        "limit-twice-equal",
    ],
)
def test_odd_query_strings(server: Server, query: str) -> None:
    r = server.signed("GET", f"/v1/jobs?{query}")
    expect_no_server_error(server, r, f"GET /v1/jobs?{query}")
    expect_healthy(server)


def test_still_serves_after_bad_ids(server: Server) -> None:
    round_trip(server)


# --- 3. bodies ----------------------------------------------------------------------------------

NOT_415 = -415  # any answer but 415 and 5xx: the media type was accepted


def _over_max() -> bytes:
    return j({"payload": {"blob": "x" * MAX_BODY}})


GENERIC_BODIES: list[tuple[str, str | bytes | None, bytes, int]] = [
    ("content-type-text-plain", "text/plain", b"{}", 415),
    ("content-type-form", "application/x-www-form-urlencoded", b"a=1", 415),
    ("content-type-multipart", "multipart/form-data; boundary=x", b"--x--\r\n", 415),
    ("content-type-missing", None, b"{}", 415),
    ("content-type-empty", "", b"{}", 415),
    ("content-type-problem-json", "application/problem+json", b"{}", 415),
    ("content-type-jsonx", "application/jsonx", b"{}", 415),
    ("content-type-non-latin-1", "application/json☃".encode(), b"{}", 415),
    ("content-type-with-charset", "application/json; charset=utf-8", b"{}", NOT_415),
    ("content-type-upper-case", "APPLICATION/JSON", b"{}", NOT_415),
    ("empty-body", "application/json", b"", 400),
    ("not-json", "application/json", b"not json", 400),
    ("truncated", "application/json", b'{"', 400),
    ("stray-comma", "application/json", b"{,}", 400),
    ("top-level-null", "application/json", b"null", 422),
    ("top-level-array", "application/json", b"[]", 422),
    ("top-level-number", "application/json", b"1", 422),
    ("top-level-string", "application/json", b'"x"', 422),
    ("nested-1000-arrays", "application/json", nested(1000), 422),
    ("nested-1000-objects", "application/json", b'{"a":' * 1000 + b"1" + b"}" * 1000, 422),
    ("nested-60000-unclosed", "application/json", b"[" * 60_000, 422),
    ("invalid-utf8-in-key", "application/json", b'{"\xff\xfe": 1}', 400),
    ("overlong-utf8-in-key", "application/json", b'{"\xc0\xaf": 1}', 400),
    ("surrogate-utf8-in-key", "application/json", b'{"\xed\xa0\x80": 1}', 400),
    ("invalid-utf8-outside-strings", "application/json", b"{\xff}", 400),
    ("lone-surrogate-escape-in-key", "application/json", b'{"\\ud800": 1}', 400),
    ("utf8-bom", "application/json", b"\xef\xbb\xbf{}", 400),
    ("utf16", "application/json", "{}".encode("utf-16"), 400),
    ("raw-nul-outside-strings", "application/json", b"{\x00}", 400),
    ("raw-nul-in-key", "application/json", b'{"a\x00b": 1}', 400),
    ("over-max-body", "application/json", _over_max(), 413),
]


def _generic_body_cases() -> Iterator[Any]:
    for method, path in BODY_OPERATIONS:
        for name, ctype, body, status in GENERIC_BODIES:
            yield pytest.param(method, path, ctype, body, status, id=f"{method} {path} {name}")


def _signed_or_admin(server: Server, method: str, target: str, body: bytes, content_type: str | bytes | None) -> Answer:
    if auth_of(target) == "admin":
        headers: Headers = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
        if content_type is not None:
            headers.append(("Content-Type", _bytes(content_type)))
        return send(server.port, method, target, headers, body)
    return server.signed(method, target, body, content_type=content_type)


@pytest.mark.parametrize(("method", "path", "ctype", "body", "status"), list(_generic_body_cases()))
def test_bodies_that_are_not_json_objects(
    server: Server, method: str, path: str, ctype: str | bytes | None, body: bytes, status: int
) -> None:
    target = server.fill(path)
    r = _signed_or_admin(server, method, target, body, ctype)
    what = f"{method} {target} [{ctype!r}] {body[:120]!r}"
    if status == NOT_415:
        assert r.status != 415, f"{what}\n-> {r.describe()}"
        expect_no_server_error(server, r, what)
    else:
        expect_problem(server, r, what, status)
    expect_healthy(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/jobs"), ("POST", "/v1/workers/ack"), ("POST", "/v1/admin/tenants")],
)
def test_chunked_body_over_the_limit_is_413(server: Server, method: str, path: str) -> None:
    body = _over_max()
    if auth_of(path) == "admin":
        headers: Headers = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    else:
        headers = server.signed_headers(method, path, body)
    headers.append(("Content-Type", b"application/json"))
    pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
    r = send(server.port, method, path, headers, chunks=pieces)
    expect_problem(server, r, f"chunked {method} {path} of {len(body)} bytes", 413)
    expect_healthy(server)


DEEP_PAYLOAD = b'{"payload": {"a": ' + nested(1000) + b"}}"
LEASE = {"worker_id": "w", "wait_ms": 0, "queues": ["hostile-none"]}
BIG = {"ten-to-30": 10**30, "two-to-63": 2**63, "two-to-70": 2**70, "minus-two-to-63-minus-1": -(2**63) - 1}
# By route: (case, body, status, field); field None where the store, not the decoder, refuses.
Case = tuple[str, bytes, int | tuple[int, ...], str | None]
LIMITS = (("zero", b"0"), ("minus-one", b"-1"), ("1e3", b"1e3"), ("ten-to-30", str(10**30).encode()))


def lease_token_cases(extra: dict[str, Any]) -> list[Case]:
    out_of_range = {k: v for k, v in BIG.items() if k != "ten-to-30"}
    return [(f"lease-token-{n}", j({**extra, "lease_token": v}), 422, "lease_token") for n, v in out_of_range.items()]


INVALID: dict[str, list[Case]] = {
    "POST /v1/jobs": [
        ("payload-nested-1000", DEEP_PAYLOAD, 422, None),
        ("payload-nul-value", j({"payload": {"s": "a\u0000b"}}), 422, None),
        ("payload-nul-key", j({"payload": {"\u0000": 1}}), 422, None),
        ("payload-nested-nul", j({"payload": {"a": [{"b": ["\u0000"]}]}}), 422, None),
        ("kind-nul", j({"kind": "\u0000"}), 422, None),
        ("idempotency-key-nul", j({"idempotency_key": "k\u0000"}), 422, None),
        ("queue-nul", j({"queue": "q\u0000"}), 422, "queue"),
        ("queue-superscript", j({"queue": "q¹"}), 422, "queue"),
        ("queue-trailing-newline", j({"queue": "q1\n"}), 422, "queue"),
        ("kind-invalid-utf8", b'{"kind": "\xff"}', 400, None),
        ("kind-overlong-utf8", b'{"kind": "\xc0\xaf"}', 400, None),
        ("payload-invalid-utf8", b'{"payload": {"s": "\xed\xa0\x80"}}', 400, None),
        ("payload-lone-surrogate-escape", b'{"payload": {"s": "\\udc00"}}', 400, None),
        ("payload-array", j({"payload": [1]}), 422, "payload"),
        ("payload-float-1e400", b'{"payload": {"x": 1e400}}', 422, None),
        ("priority-string", j({"priority": "1"}), 422, "priority"),
        ("priority-float", j({"priority": 1.5}), 422, "priority"),
        ("priority-true", j({"priority": True}), 422, "priority"),
        ("max-attempts-minus-one", j({"max_attempts": -1}), 422, "max_attempts"),
        ("delay-ms-two-to-63", j({"delay_ms": 2**63}), 422, "delay_ms"),
        ("delay-ms-string", j({"delay_ms": "10"}), 422, "delay_ms"),
        ("delay-ms-1e3", b'{"delay_ms": 1e3}', 422, "delay_ms"),
        ("timeout-seconds-zero", j({"timeout_seconds": 0}), 422, "timeout_seconds"),
        ("retry-base-ms-ten-to-30", j({"retry_base_ms": 10**30}), 422, "retry_base_ms"),
        ("run-at-not-a-time", j({"run_at": "tomorrow"}), 422, "run_at"),
        ("run-at-naive", j({"run_at": "2030-01-01T00:00:00"}), 422, "run_at"),
        ("run-at-number", j({"run_at": 1e30}), 422, "run_at"),
        ("unknown-field", j({"surprise": 1}), 422, "surprise"),
        ("last-duplicate-key-wins", b'{"priority": 1, "priority": 5000}', 422, "priority"),
        ("kind-129-chars", j({"kind": "k" * 129}), 422, "kind"),
        *[(f"priority-{n}", j({"priority": v}), 422, "priority") for n, v in BIG.items()],
    ],
    "PUT /v1/retention": [
        ("succeeded-minus-one", j({"succeeded_seconds": -1}), 422, "succeeded_seconds"),
        ("dead-ten-to-30", j({"dead_seconds": 10**30}), 422, "dead_seconds"),
        ("cancelled-string", j({"cancelled_seconds": "1"}), 422, "cancelled_seconds"),
        ("unknown-state", j({"running_seconds": 1}), 422, "running_seconds"),
    ],
    "PUT /v1/queues/{queue}/retention": [
        ("succeeded-two-to-63", j({"succeeded_seconds": 2**63}), 422, "succeeded_seconds"),
        ("dead-float", j({"dead_seconds": 1.5}), 422, "dead_seconds"),
    ],
    "PUT /v1/retry-policy": [
        ("trailing-garbage", b"{} {}", 400, None),
        ("max-attempts-minus-one", j({"max_attempts": -1}), 422, "max_attempts"),
        ("retry-base-ms-two-to-63", j({"retry_base_ms": 2**63}), 422, "retry_base_ms"),
        ("retry-cap-ms-string", j({"retry_cap_ms": "10"}), 422, "retry_cap_ms"),
    ],
    "POST /v1/workers/ack": [
        ("id-trailing-newline", j({"complete": [{"id": "1\n", "lease_token": 1}]}), 422, "complete[0].id"),
        ("trailing-garbage", b'{"complete": []} []', 400, None),
        ("id-superscript", j({"complete": [{"id": "¹", "lease_token": 1}]}), 422, "complete[0].id"),
        ("id-number", j({"complete": [{"id": 1, "lease_token": 1}]}), 422, "complete[0].id"),
        ("lease-token-two-to-70", j({"complete": [{"id": "1", "lease_token": 2**70}]}), 422, "complete[0].lease_token"),
        (
            "fail-lease-token-two-to-63",
            j({"fail": [{"id": "1", "lease_token": 2**63, "error": "e"}]}),
            422,
            "fail[0].lease_token",
        ),
        (
            "result-nested-1000",
            b'{"complete": [{"id": "1", "lease_token": 1, "result": ' + nested(1000) + b"}]}",
            422,
            None,
        ),
        ("1001-completes", j({"complete": [{"id": "1", "lease_token": 1}] * 1001}), 422, "complete"),
        ("fail-error-string-number", j({"fail": [{"id": "1", "lease_token": 1, "error": 5}]}), 422, "fail[0].error"),
    ],
    "POST /v1/jobs/batch": [
        ("queue-trailing-newline", j({"jobs": [{"queue": "q1\n"}]}), 422, "jobs[0].queue"),
        ("1001-jobs", j({"jobs": [{}] * 1001}), 422, "jobs"),
        ("jobs-string", j({"jobs": "x"}), 422, "jobs"),
        ("priority-ten-to-30", j({"jobs": [{}, {"priority": 10**30}]}), 422, "jobs[1].priority"),
        ("payload-nul", j({"jobs": [{"payload": {"s": "\u0000"}}]}), 422, None),
        ("payload-nested-1000", b'{"jobs": [{"payload": {"a": ' + nested(1000) + b"}}]}", 422, None),
        ("delay-ms-string", j({"jobs": [{"delay_ms": "10"}]}), 422, "jobs[0].delay_ms"),
    ],
    "POST /v1/workers/lease": [
        ("queue-trailing-newline", j({**LEASE, "queues": ["q1\n"]}), 422, "queues[0]"),
        ("wait-ms-ten-to-12", j({**LEASE, "wait_ms": 10**12}), 422, "wait_ms"),
        ("wait-ms-string", j({**LEASE, "wait_ms": "0"}), 422, "wait_ms"),
        ("wait-ms-1e3", b'{"worker_id": "w", "wait_ms": 1e3}', 422, "wait_ms"),
        ("max-jobs-zero", j({**LEASE, "max_jobs": 0}), 422, "max_jobs"),
        ("lease-seconds-two-to-63", j({**LEASE, "lease_seconds": 2**63}), 422, "lease_seconds"),
        ("queues-empty", j({**LEASE, "queues": []}), 422, "queues"),
        ("queues-65", j({**LEASE, "queues": ["q"] * 65}), 422, "queues"),
        ("queue-nul", j({**LEASE, "queues": ["\u0000"]}), 422, "queues[0]"),
        ("worker-id-nested-1000", b'{"worker_id": ' + nested(1000) + b"}", 422, None),
    ],
    "POST /v1/jobs/{job_id}/heartbeat": [
        ("lease-token-string", j({"lease_token": "1"}), 422, "lease_token"),
        ("lease-token-float", j({"lease_token": 1.0}), 422, "lease_token"),
        ("extend-zero", j({"lease_token": 1, "extend_seconds": 0}), 422, "extend_seconds"),
        ("extend-ten-to-30", j({"lease_token": 1, "extend_seconds": 10**30}), 422, "extend_seconds"),
        *lease_token_cases({}),
    ],
    "POST /v1/jobs/{job_id}/complete": [
        ("result-nested-1000", b'{"lease_token": 1, "result": ' + nested(1000) + b"}", 422, None),
        ("result-nul", j({"lease_token": 1, "result": "\u0000"}), (409, 422), None),
        ("result-nul-key", j({"lease_token": 1, "result": {"\u0000": 1}}), (409, 422), None),
        *lease_token_cases({}),
    ],
    "POST /v1/jobs/{job_id}/fail": [
        ("error-nul", j({"lease_token": 1, "error": "\u0000"}), (409, 422), None),
        ("error-65537-chars", j({"lease_token": 1, "error": "e" * 65537}), 422, "error"),
        ("retry-in-ms-minus-one", j({"lease_token": 1, "error": "e", "retry_in_ms": -1}), 422, "retry_in_ms"),
        ("retry-in-ms-two-to-63", j({"lease_token": 1, "error": "e", "retry_in_ms": 2**63}), 422, "retry_in_ms"),
        ("retryable-string", j({"lease_token": 1, "error": "e", "retryable": "yes"}), 422, "retryable"),
        *lease_token_cases({"error": "e"}),
    ],
    "POST /v1/consumers": [
        ("name-trailing-newline", j({"name": "c2\n"}), 422, "name"),
        ("name-nul", j({"name": "\u0000"}), 422, "name"),
        ("name-superscript", j({"name": "¹"}), 422, "name"),
        ("name-65-chars", j({"name": "c" * 65}), 422, "name"),
        ("start-unknown", j({"name": "c2", "start": "middle"}), 422, "start"),
    ],
    "POST /v1/consumers/{name}/ack": [
        ("cursor-trailing-newline", j({"cursor": "1-1\n"}), 422, "cursor"),
        ("cursor-superscript", j({"cursor": "¹-1"}), 422, "cursor"),
        ("cursor-xid-over-64-bits", j({"cursor": "99999999999999999999-1"}), 422, "cursor"),
        ("cursor-never-handed-out", j({"cursor": "18446744073709551615-9223372036854775807"}), 422, "cursor"),
        ("cursor-number", j({"cursor": 1}), 422, "cursor"),
        ("cursor-nul", j({"cursor": "1-1\u0000"}), 422, "cursor"),
    ],
    "POST /v1/webhooks": [
        ("url-leading-space", j({"url": " http://127.0.0.1:1/"}), 422, "url"),
        ("url-tab-in-scheme", j({"url": "ht\ttp://127.0.0.1:1/"}), 422, "url"),
        ("url-leading-control-char", j({"url": "\u0001http://127.0.0.1:1/"}), 422, "url"),
        ("secret-trailing-newline", j({"url": "http://127.0.0.1:1/", "secret": "s" * 16 + "\n"}), 422, "secret"),
        ("url-unclosed-ipv6", j({"url": "http://[::1"}), 422, "url"),
        ("url-nfkc-hash", j({"url": "http://127.0.0.1\uff03/"}), 422, "url"),
        ("url-port-99999", j({"url": "http://127.0.0.1:99999/"}), 422, "url"),
        ("url-port-negative", j({"url": "http://127.0.0.1:-1/"}), 422, "url"),
        ("url-nul", j({"url": "\u0000"}), 422, "url"),
        ("url-ftp", j({"url": "ftp://127.0.0.1/"}), 422, "url"),
        ("url-no-host", j({"url": "http:///x"}), 422, "url"),
        ("url-2049-chars", j({"url": "http://127.0.0.1/" + "u" * 2032}), 422, "url"),
        ("event-type-unknown", j({"url": "http://127.0.0.1:1/", "event_types": ["nope"]}), 422, "event_types[0]"),
        ("secret-short", j({"url": "http://127.0.0.1:1/", "secret": "s"}), 422, "secret"),
        ("secret-nul", j({"url": "http://127.0.0.1:1/", "secret": "\u0000" * 16}), 422, "secret"),
        ("url-number", j({"url": 80}), 422, "url"),
    ],
    "POST /v1/schedules": [
        ("name-trailing-newline", j({"name": "nl\n", "cron": "* * * * *", "paused": True}), 422, "name"),
        (
            "queue-trailing-newline",
            j({"name": "nlq", "cron": "* * * * *", "paused": True, "queue": "q\n"}),
            422,
            "queue",
        ),
        ("cron-nul", j({"name": "n1", "cron": "\u0000"}), 422, "cron"),
        ("cron-step-zero", j({"name": "n2", "cron": "*/0 * * * *"}), 422, "cron"),
        ("cron-never-fires", j({"name": "n3", "cron": "0 0 31 2 *"}), 422, "cron"),
        ("cron-twenty-digits", j({"name": "n4", "cron": "99999999999999999999 * * * *"}), 422, "cron"),
        ("cron-seven-fields", j({"name": "n5", "cron": "* * * * * * *"}), 422, "cron"),
        ("cron-superscript", j({"name": "n6", "cron": "¹ * * * *"}), 422, "cron"),
        ("timezone-nul", j({"name": "n7", "cron": "* * * * *", "timezone": "UTC\u0000"}), 422, "timezone"),
        ("timezone-path", j({"name": "n8", "cron": "* * * * *", "timezone": "../../../etc/passwd"}), 422, "timezone"),
        ("name-nul", j({"name": "\u0000", "cron": "* * * * *"}), 422, "name"),
        ("payload-nul", j({"name": "n9", "cron": "* * * * *", "paused": True, "payload": {"s": "\u0000"}}), 422, None),
        ("priority-ten-to-30", j({"name": "n10", "cron": "* * * * *", "priority": 10**30}), 422, "priority"),
        (
            "payload-nested-1000",
            b'{"name": "n11", "cron": "* * * * *", "payload": {"a": ' + nested(1000) + b"}}",
            422,
            None,
        ),
    ],
    "PATCH /v1/schedules/{name}": [
        ("queue-trailing-newline", j({"queue": "q\n"}), 422, "queue"),
        ("cron-nul", j({"cron": "\u0000"}), 422, "cron"),
        ("timezone-nul", j({"timezone": "\u0000"}), 422, "timezone"),
        ("payload-nul", j({"payload": {"\u0000": 1}}), 422, None),
        ("max-attempts-minus-one", j({"max_attempts": -1}), 422, "max_attempts"),
        ("priority-string", j({"priority": "1"}), 422, "priority"),
    ],
    "PUT /v1/queues/{queue}/retry-policy": [
        ("last-duplicate-key-wins", b'{"max_attempts": 5, "max_attempts": 500}', 422, "max_attempts"),
    ],
    "POST /v1/admin/tenants": [
        ("id-trailing-newline", j({"id": "t-nl\n"}), 422, "id"),
        ("id-nul", j({"id": "\u0000"}), 422, "id"),
        ("id-superscript", j({"id": "t¹"}), 422, "id"),
        ("name-nul", j({"id": "t-nul-name", "name": "\u0000"}), 422, None),
        ("weight-ten-to-30", j({"id": "t1", "weight": 10**30}), 422, "weight"),
        ("weight-string", j({"id": "t1", "weight": "1"}), 422, "weight"),
        ("max-inflight-minus-one", j({"id": "t1", "max_inflight": -1}), 422, "max_inflight"),
    ],
    "PATCH /v1/admin/tenants/{tenant_id}": [
        ("name-nul", j({"name": "\u0000"}), 422, None),
        ("weight-zero", j({"weight": 0}), 422, "weight"),
        ("max-inflight-ten-to-30", j({"max_inflight": 10**30}), 422, "max_inflight"),
        ("disabled-string", j({"disabled": "yes"}), 422, "disabled"),
    ],
    "POST /v1/admin/replay": [
        ("tenant-nul", j({"tenant_id": "\u0000"}), 422, "tenant_id"),
        ("ids-superscript", j({"tenant_id": "victim", "ids": ["¹"]}), 422, "ids[0]"),
        ("queue-nul", j({"tenant_id": "victim", "queue": "\u0000"}), 422, "queue"),
        *[(f"limit-{n}", b'{"tenant_id": "victim", "limit": %s}' % v, 422, "limit") for n, v in LIMITS],
    ],
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        pytest.param(*route.split(" "), b, s, f, id=f"{route} {name}")
        for route, cases in INVALID.items()
        for name, b, s, f in cases
    ],
)
def test_invalid_fields_are_4xx_naming_the_field(
    server: Server, method: str, path: str, body: bytes, status: int | tuple[int, ...], field: str | None
) -> None:
    target = server.fill(path)
    r = _signed_or_admin(server, method, target, body, "application/json")
    expect_problem(server, r, f"{method} {target} {body[:200]!r}", status, field)
    expect_healthy(server)


# Values that are odd but in range: the answer may be a success or a 4xx, never a 500.
ODD_BUT_ALLOWED: dict[str, list[tuple[str, bytes]]] = {
    "POST /v1/jobs": [
        ("payload-int-ten-to-30", j({"payload": {"n": 10**30}})),
        ("payload-int-minus-two-to-64", j({"payload": {"n": -(2**64)}})),
        ("payload-tiny-float", b'{"payload": {"f": 1e-400, "z": -0.0}}'),
        ("run-at-year-9999-west", j({"run_at": "9999-12-31T23:59:59-23:59", "queue": PARKED_QUEUE})),
        ("run-at-year-1-east", j({"run_at": "0001-01-01T00:00:00+23:59", "queue": PARKED_QUEUE})),
        ("run-at-leap-second", j({"run_at": "2030-06-30T23:59:60Z", "queue": PARKED_QUEUE})),
        ("payload-20000-element-array", j({"payload": {"a": [0] * 20_000}})),
        ("payload-key-10000-chars", j({"payload": {"k" * 10_000: 1}})),
        ("payload-emoji-and-rtl", j({"payload": {"s": "😀\u202e\ufeff\U0010ffff"}})),
        ("idempotency-key-255-emoji", j({"idempotency_key": "😀" * 255, "queue": PARKED_QUEUE})),
        ("delay-ms-max", j({"delay_ms": 366 * 86_400_000, "queue": PARKED_QUEUE})),
    ],
    "POST /v1/jobs/batch": [
        (
            "same-idempotency-key-twice",
            j(
                {
                    "jobs": [
                        {"idempotency_key": "twice", "queue": PARKED_QUEUE},
                        {"idempotency_key": "twice", "queue": PARKED_QUEUE},
                    ]
                }
            ),
        ),
    ],
    "POST /v1/workers/lease": [
        ("worker-id-nul", j({**LEASE, "worker_id": "w\u0000"})),
        ("worker-id-emoji", j({**LEASE, "worker_id": "😀" * 128})),
        (
            "wait-ms-last-duplicate-wins",
            b'{"worker_id": "w", "queues": ["hostile-none"], "wait_ms": 60000, "wait_ms": 0}',
        ),
    ],
    "POST /v1/workers/ack": [
        ("id-19-nines", j({"complete": [{"id": "9" * 19, "lease_token": 1}]})),
        (
            "id-zero",
            j({"complete": [{"id": "0", "lease_token": 1}], "fail": [{"id": "0", "lease_token": 1, "error": "e"}]}),
        ),
        (
            "same-job-complete-and-fail",
            b'{"complete": [{"id": "{job_id}", "lease_token": 1}], "fail": [{"id": "{job_id}", "lease_token": 1, "error": "e"}]}',
        ),
        (
            "same-job-twice",
            b'{"complete": [{"id": "{job_id}", "lease_token": 1}, {"id": "{job_id}", "lease_token": 2}]}',
        ),
        ("fail-error-nul", j({"fail": [{"id": "1", "lease_token": 1, "error": "\u0000"}]})),
        ("result-nul", j({"complete": [{"id": "1", "lease_token": 1, "result": "\u0000"}]})),
    ],
    "POST /v1/webhooks": [
        ("url-loopback-nul-path", j({"url": "http://127.0.0.1:1/\u0000"})),
        ("url-userinfo-only", j({"url": "http://user@/x"})),
        ("url-2048-emoji", j({"url": "http://127.0.0.1:1/" + "😀" * 2029})),
        ("url-ipv4-mapped-self", j({"url": "http://[::ffff:127.0.0.1]:1/"})),
    ],
    "POST /v1/admin/replay": [
        ("ids-19-nines", j({"tenant_id": "victim", "ids": ["9" * 19]})),
        ("tenant-unknown", j({"tenant_id": "nobody"})),
    ],
    "PATCH /v1/admin/tenants/{tenant_id}": [
        ("max-inflight-null", j({"max_inflight": None})),
    ],
    "PATCH /v1/schedules/{name}": [
        ("empty", b"{}"),
    ],
}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(*route.split(" "), b, id=f"{route} {name}")
        for route, cases in ODD_BUT_ALLOWED.items()
        for name, b in cases
    ],
)
def test_odd_values_never_500(server: Server, method: str, path: str, body: bytes) -> None:
    target = server.fill(path)
    raw = body.replace(b"{job_id}", server.job_id.encode())
    r = _signed_or_admin(server, method, target, raw, "application/json")
    expect_no_server_error(server, r, f"{method} {target} {raw[:200]!r}")
    expect_healthy(server)


def test_duplicate_keys_the_last_one_wins(server: Server) -> None:
    r = server.signed(
        "POST", "/v1/jobs", b'{"queue": "%s", "payload": {"a": 1}, "payload": {"a": 2, "a": 3}}' % PARKED_QUEUE.encode()
    )
    assert r.status == 201, r.describe() + server.server_errors(r)
    assert json.loads(r.body)["payload"] == {"a": 3}


def test_nesting_limit_is_64_levels(server: Server) -> None:
    # The body object is one level, payload a second: 62 more arrays make 64, 63 make 65.
    at_limit = b'{"queue": "%s", "payload": {"a": %s}}' % (PARKED_QUEUE.encode(), nested(62))
    r = server.signed("POST", "/v1/jobs", at_limit)
    assert r.status == 201, r.describe() + server.server_errors(r)
    over = b'{"queue": "%s", "payload": {"a": %s}}' % (PARKED_QUEUE.encode(), nested(63))
    expect_problem(server, server.signed("POST", "/v1/jobs", over), "65 levels", 422)


def test_brackets_inside_strings_do_not_count_as_nesting(server: Server) -> None:
    text = '"\\"' + "[{" * 500
    body = j({"queue": PARKED_QUEUE, "payload": {"s": text, "t": "\\" * 9 + "[" * 100}})
    r = server.signed("POST", "/v1/jobs", body)
    assert r.status == 201, r.describe() + server.server_errors(r)
    assert json.loads(r.body)["payload"]["s"] == text


def test_measuring_nesting_takes_linear_time(server: Server) -> None:
    """A body of escaped quotes after many brackets: measuring its depth must not take quadratic
    time, which would stall every request the process serves while it runs."""
    body = b"[" * 65 + b'"' + b'\\"' * 12_000
    r = server.signed("POST", "/v1/jobs", body, timeout=60)
    expect_problem(server, r, f"{len(body)} bytes of escaped quotes", (400, 422))
    assert r.seconds < 2.0, f"answered after {r.seconds:.1f} s"
    expect_healthy(server)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("traceparent", b"00-" + b"f" * 5000),
        ("traceparent", "00-☃☃-☃☃-01".encode()),
        ("X-Request-Id", "запрос".encode()),
        ("X-Request-Id", b"r" * 5000),
        ("X-Request-Id", b"\xff\xfe"),
    ],
    ids=[
        "traceparent-5000-chars",
        "traceparent-non-latin-1",
        "request-id-non-latin-1",
        "request-id-5000-chars",
        "request-id-latin-1",
    ],
)
def test_odd_trace_and_request_headers_on_submit(server: Server, name: str, value: bytes) -> None:
    r = server.signed("POST", "/v1/jobs", j({"queue": PARKED_QUEUE}), extra=[(name, value)])
    assert r.status == 201, r.describe() + server.server_errors(r)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", r.headers.get("x-request-id", "")), r.headers
    assert json.loads(r.body)["traceparent"] is None


def test_still_serves_after_hostile_bodies(server: Server) -> None:
    round_trip(server)


# --- 4. property-based: generated requests for every operation in the OpenAPI document ----------


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )


OFFSETS = [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12)), timezone(timedelta(minutes=-1))]


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON schema of Litestar's OpenAPI document describes (the parts it uses)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(SCHEMAS[name]))
    for key in ("oneOf", "anyOf"):
        if key in schema:
            # Constraints beside oneOf belong to its typed alternatives.
            rest = {k: v for k, v in schema.items() if k != key}
            return st.one_of([from_schema({**rest, **alt}) for alt in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(None if low is None else math.ceil(low), None if high is None else math.floor(high))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.sampled_from(OFFSETS)).map(lambda d: d.isoformat())
        shortest: int = schema.get("minLength", 0)
        longest: int = schema.get("maxLength", 40)
        if "pattern" in schema:

            def fits(s: str) -> bool:
                return shortest <= len(s) <= longest

            return st.from_regex(schema["pattern"], fullmatch=True).filter(fits)
        return st.text(min_size=shortest, max_size=min(longest, 40))
    if kind == "array":
        items = from_schema(schema.get("items", {}))
        low = schema.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 4), 4)))
    if kind == "object" and "properties" in schema:
        props: dict[str, Any] = schema["properties"]
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(st.text(max_size=8), json_values(), max_size=4)
    return json_values()


def mangled(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The schema's own field names with values of any type, or any JSON at all."""
    props = schema.get("properties", {})
    if "$ref" in schema:
        props = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]].get("properties", {})
    wrong = st.fixed_dictionaries({}, optional=dict.fromkeys(props, json_values())) if props else json_values()
    return wrong | json_values()


LONG_POLL_CAP = 20  # ms: generated long-polls may not make the run wait


def _capped(path: str, body: Any, closed_port: int) -> Any:
    """Keep a generated body within the run's bounds: no long waits, no webhook that leaves the machine."""
    if not isinstance(body, dict):
        return body
    if path == "/v1/workers/lease":
        wait = body.get("wait_ms", 30_000)
        if isinstance(wait, int) and not isinstance(wait, bool) and wait > LONG_POLL_CAP:
            body = {**body, "wait_ms": LONG_POLL_CAP}
    if path == "/v1/webhooks" and isinstance(body.get("url"), str):
        try:
            scheme = urlsplit(body["url"]).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme in ("http", "https"):
            body = {**body, "url": f"http://127.0.0.1:{closed_port}/generated"}
    return body


@dataclass(frozen=True)
class Generated:
    target: str
    body: bytes | None
    content_type: str
    key: str  # "tenant", "worker" or "admin"


def requests_for(method: str, path: str, server: Server, closed_port: int) -> st.SearchStrategy[Generated]:
    op = operation(method, path)
    pools = {
        "job_id": [server.job_id, "0", "1", NOWHERE_ID],
        "webhook_id": [server.webhook_id, "0", NOWHERE_ID],
        "name": [server.consumer, server.schedule],
        "queue": [server.queue, PARKED_QUEUE],
        "tenant_id": [server.victim, "nobody"],
        "key_id": ["tk_0000000000000000"],
    }
    params = op.get("parameters", [])

    @st.composite
    def build(draw: st.DrawFn) -> Generated:
        target = path
        query: list[str] = []
        for p in params:
            schema = p.get("schema", {})
            if p["in"] == "path":
                value = draw(st.sampled_from(pools.get(p["name"], ["x"])) | st.text(min_size=1, max_size=12))
                target = target.replace("{" + p["name"] + "}", quote(value, safe=""))
            elif p["in"] == "query" and draw(st.booleans()):
                raw = draw(from_schema(schema).map(str) | st.text(max_size=8))
                if p["name"] == "wait_ms" and raw.isascii() and raw.isdigit() and int(raw) > LONG_POLL_CAP:
                    raw = str(LONG_POLL_CAP)
                query.append(f"{quote(p['name'])}={quote(raw, safe='')}")
        if query:
            target += "?" + "&".join(query)
        schema = body_schema(method, path)
        body: bytes | None = None
        content_type = "application/json"
        if schema is not None:
            value = draw(st.one_of(from_schema(schema), from_schema(schema), mangled(schema)))
            body = j(_capped(path, value, closed_port))
            if draw(st.integers(0, 9)) == 0:
                content_type = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", ""]))
        kinds = {"admin": ["admin"], "none": ["tenant"], "signed": ["tenant", "tenant", "worker"]}
        return Generated(target, body, content_type, draw(st.sampled_from(kinds[auth_of(path)])))

    return build()


def send_generated(server: Server, method: str, g: Generated) -> Answer:
    body = g.body if g.body is not None else b""
    if g.key == "admin":
        headers: Headers = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    else:
        headers = server.signed_headers(method, g.target, body, server.tenant if g.key == "tenant" else server.worker)
    if g.body is not None and g.content_type:
        headers.append(("Content-Type", g.content_type.encode()))
    return send(server.port, method, g.target, headers, g.body, timeout=10)


def check_declared(method: str, path: str, g: Generated, r: Answer, server: Server) -> None:
    what = f"{method} {g.target} as {g.key} [{g.content_type}] {(g.body or b'')[:300]!r}"
    if r.status >= 400:
        expect_problem(server, r, what)
        return
    assert 200 <= r.status < 300, f"{what}\n-> {r.describe()}"
    declared = operation(method, path).get("responses", {}).get(str(r.status), {}).get("content", {})
    if r.status == 204 or not declared:
        return
    media = next(iter(declared))
    assert r.content_type.startswith(media.split(";")[0]), f"{what}\n-> {r.describe()} (declared {media})"
    if "json" in media:
        json.loads(r.body)


PROPERTY_EXAMPLES = 30


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_never_500(server: Server, method: str, path: str) -> None:
    closed_port = free_port()

    @settings(
        max_examples=PROPERTY_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(requests_for(method, path, server, closed_port))
    def run(g: Generated) -> None:
        r = send_generated(server, method, g)
        check_declared(method, path, g, r, server)

    run()
    expect_healthy(server)


def test_still_serves_at_the_end(server: Server) -> None:
    round_trip(server)
    r = send(server.port, "GET", "/readyz")
    assert "failing_services" not in json.loads(r.body), r.describe()


def test_nothing_unhandled_was_logged(server: Server) -> None:
    """Background services that met what the requests stored did not fail on it either."""
    errors = []
    for line in server.gw.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            errors.append(f"{record.get('msg')}\n" + "\n".join(str(record.get("exc", "")).splitlines()[-6:]))
    assert not errors, "\n\n".join(errors[:5])
