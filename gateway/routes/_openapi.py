"""The OpenAPI document as the server behaves, and the page that shows it.

Litestar builds the document from the routes' types; `finish` then completes it from what the
routes do. Each operation's security and error statuses follow from its guards (`signed`,
`operator`), its parameters and its body; every error is the problem+json document
gateway/errors.py sends; a 204 has no body; the main operations carry examples. A route adds the
statuses only it can answer (a 409, a 410) with `responses=problems({...})` on its decorator.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import Components, OpenAPI, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.types import Method
from litestar.types.internal_types import PathParameterDefinition

from core import JobState, signing
from core.wire import (
    AckResponse,
    AckResult,
    HeartbeatResponse,
    Job,
    JobBatch,
    LeasedJob,
    LeaseResponse,
    Problem,
)

from .. import errors
from ..auth import operator, signed
from . import _paths

# --- security ------------------------------------------------------------------------------

KEY_ID, TIMESTAMP, NONCE, SIGNATURE = "keyId", "timestamp", "nonce", "signature"
ADMIN_TOKEN, METRICS_TOKEN = "adminToken", "metricsToken"

SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    KEY_ID: SecurityScheme(
        type="apiKey",
        name=signing.HEADER_KEY_ID,
        security_scheme_in="header",
        description="The key's id: the part of the API key `<key_id>.<secret>` before the first `.`. "
        "A signed request carries all four signing headers.",
    ),
    TIMESTAMP: SecurityScheme(
        type="apiKey",
        name=signing.HEADER_TIMESTAMP,
        security_scheme_in="header",
        description=f"Unix time in whole seconds, within {signing.MAX_SKEW_SECONDS} s of the server's clock.",
    ),
    NONCE: SecurityScheme(
        type="apiKey",
        name=signing.HEADER_NONCE,
        security_scheme_in="header",
        description="16 to 64 characters of `[A-Za-z0-9_-]`, new for each request: a nonce the server "
        "has already accepted for the key is refused.",
    ),
    SIGNATURE: SecurityScheme(
        type="apiKey",
        name=signing.HEADER_SIGNATURE,
        security_scheme_in="header",
        description="Lowercase hex HMAC-SHA256, keyed with the key's secret (the part after the first `.`), "
        "of five lines joined by `\\n`: the method in upper case; the path with the query string exactly "
        "as sent; the X-Timestamp value; the X-Nonce value; the lowercase hex SHA-256 of the raw body "
        "(of the empty string when there is none). docs/protocol.md has the details.",
    ),
    ADMIN_TOKEN: SecurityScheme(
        type="http",
        scheme="bearer",
        description="The operator's token, the server's ORCH_ADMIN_TOKEN: `Authorization: Bearer <token>`.",
    ),
    METRICS_TOKEN: SecurityScheme(
        type="http",
        scheme="bearer",
        description="ORCH_METRICS_TOKEN, asked for only when the server sets it; without it /metrics is open.",
    ),
}


def signed_security() -> list[dict[str, list[str]]]:
    """The four signing headers, all required together: one requirement."""
    return [{KEY_ID: [], TIMESTAMP: [], NONCE: [], SIGNATURE: []}]


def operator_security() -> list[dict[str, list[str]]]:
    return [{ADMIN_TOKEN: []}]


# For the /metrics decorator: open, or the metrics token when the server sets one.
METRICS_SECURITY: list[dict[str, list[str]]] = [{}, {METRICS_TOKEN: []}]

# --- errors --------------------------------------------------------------------------------

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMAS: dict[str, Any] = msgspec.json.schema_components([Problem], ref_template="#/components/schemas/{name}")[
    1
]
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}


@dataclass(frozen=True)
class _Error:
    name: str  # of its entry in components/responses
    description: str
    example: str  # an example detail
    field: str | None = None


ERRORS: dict[int, _Error] = {
    400: _Error("MalformedRequest", "The body is not valid JSON, or not UTF-8.", "the body is not valid JSON"),
    401: _Error(
        "Unauthenticated",
        "A credential is missing or wrong: a signing header missing, an unknown or revoked key, a bad "
        "signature, a timestamp too far from the server's clock or a nonce already used; or the bearer "
        "token missing or wrong.",
        "the signature does not match the request",
    ),
    403: _Error(
        "Forbidden",
        "The credential is valid but may not do this: a shared worker key on a tenant's route, a disabled "
        "tenant, or a tenant or worker key on an operator route.",
        "a shared worker key may only lease jobs and report on them",
    ),
    404: _Error(
        "NotFound",
        "No such resource; one of another tenant gets the same answer.",
        "no such job",
    ),
    409: _Error(
        "Conflict",
        "The resource's state does not allow this, or it exists already.",
        "a succeeded job cannot be cancelled",
    ),
    410: _Error(
        "Gone",
        "The cursor lies before the oldest retained event: the events after it were pruned.",
        "events after cursor 1:0 were pruned",
    ),
    413: _Error(
        "BodyTooLarge",
        "The body is larger than the server's limit (ORCH_MAX_BODY_BYTES, 1 MiB by default).",
        "Request Entity Too Large",
    ),
    415: _Error(
        "UnsupportedMediaType",
        "The body is not sent as `Content-Type: application/json`.",
        "Content-Type: application/json is required",
    ),
    422: _Error(
        "InvalidField",
        "A field of the body or a parameter fails validation; `field` names it.",
        "priority: Expected `int` <= 1000",
        "priority",
    ),
    503: _Error(
        "Unavailable",
        "The database is unreachable; try again after Retry-After seconds.",
        "the database is unreachable; retry shortly",
    ),
}


def _problem_response(status: int, description: str) -> dict[str, Any]:
    error = ERRORS.get(status)
    if error is None:
        raise ValueError(f"no problem document is described for status {status}: add it to ERRORS")
    example = msgspec.json.decode(errors.problem(status, error.example, field=error.field).content)
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}},
    }
    if status == 503:
        response["headers"] = dict(RETRY_AFTER)
    return response


def problems(described: Mapping[int, str]) -> dict[int, ResponseSpec]:
    """For a route's decorator: error statuses it answers beyond those derived from its guards,
    parameters and body, each with what it means there."""
    return {status: ResponseSpec(None, description=text) for status, text in described.items()}


# Heartbeat, complete and fail with a lease that is no longer the job's.
STALE_LEASE = problems(
    {
        409: "The lease token is not the job's current one (its lease expired and the job was leased again), "
        "or the job's state does not allow this."
    }
)
# Reads of events by cursor.
PRUNED = problems({410: ERRORS[410].description + " Read without a cursor to start at the oldest retained one."})
# A submit that repeats an earlier one with the same idempotency key.
RESUBMITTED: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        Job,
        generate_examples=False,
        description="The idempotency key names a job an identical request created: that job, unchanged.",
    )
}
# /readyz when not ready: the same body as its 200.
NOT_READY: dict[int, ResponseSpec] = {
    503: ResponseSpec(
        dict[str, Any],
        generate_examples=False,
        description="Not ready: the database or the LISTEN connection is down (`database`, `listen`), "
        "or background services are failing (`failing_services`).",
    )
}

# --- examples ------------------------------------------------------------------------------

_AT = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
_JOB = Job(
    id="4711",
    tenant_id="acme",
    queue="emails",
    kind="send_welcome",
    payload={"user_id": 42},
    priority=5,
    state=JobState.READY,
    attempts=0,
    max_attempts=5,
    run_at=_AT,
    created_at=_AT,
    idempotency_key="signup-42",
)
_LEASED = LeasedJob(
    **{f: getattr(_JOB, f) for f in _JOB.__struct_fields__ if f not in ("state", "attempts", "started_at")},
    state=JobState.RUNNING,
    attempts=1,
    started_at=_AT,
    lease_token=17,
    lease_expires_at=datetime(2026, 5, 4, 9, 31, tzinfo=UTC),
)
_DONE = msgspec.structs.replace(
    _JOB, state=JobState.SUCCEEDED, attempts=1, started_at=_AT, finished_at=_AT, result={"sent": True}
)


@dataclass(frozen=True)
class Example:
    summary: str
    request: Any  # the JSON body, or None
    status: int
    response: Any


def _wire(value: Any) -> Any:
    return msgspec.to_builtins(value)


EXAMPLES: dict[tuple[str, str], Example] = {
    ("post", "/v1/jobs"): Example(
        "A job for the `emails` queue, safe to resend",
        {
            "queue": "emails",
            "kind": "send_welcome",
            "payload": {"user_id": 42},
            "priority": 5,
            "idempotency_key": "signup-42",
        },
        201,
        _wire(_JOB),
    ),
    ("post", "/v1/jobs/batch"): Example(
        "Two jobs, one of them in a minute",
        {
            "jobs": [
                {"queue": "emails", "kind": "send_welcome", "payload": {"user_id": 42}},
                {"queue": "emails", "kind": "send_reminder", "payload": {"user_id": 42}, "delay_ms": 60000},
            ]
        },
        201,
        _wire(
            JobBatch(
                jobs=[
                    msgspec.structs.replace(_JOB, idempotency_key=None),
                    msgspec.structs.replace(
                        _JOB,
                        id="4712",
                        kind="send_reminder",
                        state=JobState.SCHEDULED,
                        priority=0,
                        idempotency_key=None,
                        run_at=datetime(2026, 5, 4, 9, 31, tzinfo=UTC),
                    ),
                ]
            )
        ),
    ),
    ("get", "/v1/jobs/{job_id}"): Example("A job that has succeeded", None, 200, _wire(_DONE)),
    ("post", "/v1/workers/lease"): Example(
        "Up to 10 jobs of `emails`, waiting up to 20 s for the first",
        {"worker_id": "mailer-1", "queues": ["emails"], "max_jobs": 10, "wait_ms": 20000, "lease_seconds": 60},
        200,
        _wire(LeaseResponse(jobs=[_LEASED])),
    ),
    ("post", "/v1/jobs/{job_id}/heartbeat"): Example(
        "Another minute for a leased job",
        {"lease_token": 17, "extend_seconds": 60},
        200,
        _wire(HeartbeatResponse(lease_expires_at=datetime(2026, 5, 4, 9, 32, tzinfo=UTC), cancel_requested=False)),
    ),
    ("post", "/v1/jobs/{job_id}/complete"): Example(
        "Done, with a result", {"lease_token": 17, "result": {"sent": True}}, 200, _wire(_DONE)
    ),
    ("post", "/v1/jobs/{job_id}/fail"): Example(
        "Failed; retry in 30 s",
        {"lease_token": 17, "error": "SMTP timeout", "retry_in_ms": 30000},
        200,
        _wire(msgspec.structs.replace(_JOB, state=JobState.SCHEDULED, attempts=1, last_error="SMTP timeout")),
    ),
    ("post", "/v1/workers/ack"): Example(
        "One job done and one failed, in one round trip",
        {
            "complete": [{"id": "4711", "lease_token": 17, "result": {"sent": True}}],
            "fail": [{"id": "4712", "lease_token": 18, "error": "SMTP timeout", "retryable": True}],
        },
        200,
        _wire(
            AckResponse(
                results=[
                    AckResult(id="4711", status=200, state=JobState.SUCCEEDED),
                    AckResult(id="4712", status=200, state=JobState.SCHEDULED),
                ]
            )
        ),
    ),
}


def _add_examples(method: str, path: str, operation: dict[str, Any]) -> None:
    example = EXAMPLES.get((method, path))
    if example is None:
        return
    if example.request is not None:
        media = operation["requestBody"]["content"]["application/json"]
        media["examples"] = {"example": {"summary": example.summary, "value": example.request}}
    media = operation["responses"][str(example.status)]["content"]["application/json"]
    media["examples"] = {"example": {"summary": example.summary, "value": example.response}}


# --- the document --------------------------------------------------------------------------

_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def _derived_errors(operation: dict[str, Any], handler: HTTPRouteHandler) -> set[int]:
    """The error statuses an operation can answer, from its guards, parameters and body."""
    guards = handler.resolve_guards()
    where = {p.get("in") for p in operation.get("parameters", [])}
    found: set[int] = set()
    if signed in guards:
        # The guard reads the body (up to the limit) to check the signature, on every route.
        found |= {401, 403, 413, 503}
    elif operator in guards:
        found |= {401, 403, 503}
    if "requestBody" in operation:
        found |= {400, 413, 415, 422}
    if where & {"query", "header"} or _paths.strict_query in guards:
        found.add(422)
    if "path" in where:
        found.add(404)
    return found


def _complete(path: str, method: str, operation: dict[str, Any], handler: HTTPRouteHandler) -> None:
    guards = handler.resolve_guards()
    if "security" not in operation:
        if signed in guards:
            operation["security"] = signed_security()
        elif operator in guards:
            operation["security"] = operator_security()
    declared = {int(status) for status in handler.responses or {}}
    derived = _derived_errors(operation, handler)
    responses: dict[str, Any] = operation["responses"]
    # Dropped: error responses Litestar adds in a shape this server never sends.
    kept = {key: r for key, r in responses.items() if int(key) < 400 or int(key) in declared}
    for status in derived | declared:
        if status < 400:
            continue
        key = str(status)
        given = kept.get(key)
        if given is None:
            kept[key] = {"$ref": f"#/components/responses/{ERRORS[status].name}"}
        elif "content" not in given:
            kept[key] = _problem_response(status, given.get("description") or ERRORS[status].description)
        elif status == 503:
            given.setdefault("headers", {}).update(RETRY_AFTER)
    if "204" in kept:
        kept["204"].pop("content", None)
    operation["responses"] = dict(sorted(kept.items()))
    _add_examples(method, path, operation)


def finish(document: dict[str, Any], handlers: Mapping[str, HTTPRouteHandler]) -> dict[str, Any]:
    """Complete the document Litestar generated (`handlers`: each operation id's route handler)."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(PROBLEM_SCHEMAS)
    components["responses"] = {
        error.name: _problem_response(status, error.description) for status, error in ERRORS.items()
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            handler = handlers.get(operation.get("operationId", ""))
            if handler is None:
                raise ValueError(f"{method.upper()} {path}: its operation id was not named by the config")
            _complete(path, method, operation, handler)
    return document


class _Document(OpenAPI):
    """The document Litestar fills in; its dictionary form is `finish`ed."""

    handlers: Mapping[str, HTTPRouteHandler]

    def to_schema(self) -> dict[str, Any]:
        return finish(super().to_schema(), self.handlers)


OperationIdCreator = Callable[[HTTPRouteHandler, Method, list[str | PathParameterDefinition]], str]


class DocumentedConfig(OpenAPIConfig):
    """Litestar's config, which notes the handler of each operation as it names the operations (the
    one hook Litestar calls per operation), so that `finish` knows each one's guards."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.handlers: dict[str, HTTPRouteHandler] = {}
        name_of: OperationIdCreator = self.operation_id_creator

        def naming(handler: HTTPRouteHandler, method: Method, parts: list[str | PathParameterDefinition]) -> str:
            operation_id = name_of(handler, method, parts)
            self.handlers[operation_id] = handler
            return operation_id

        self.operation_id_creator = naming

    def to_openapi_schema(self) -> OpenAPI:
        base = super().to_openapi_schema()  # Litestar adds the operations to it next
        self.handlers = {}
        document = _Document(**{f.name: getattr(base, f.name) for f in fields(base)})
        document.handlers = self.handlers
        return document


# --- the page ------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent.parent / "openapi_assets"
ASSETS_ROUTE = "openapi_assets"


class SwaggerPage(OpenAPIRenderPlugin):
    """Swagger UI from the files in gateway/openapi_assets, served by the gateway itself, so the
    page loads nothing from elsewhere."""

    def __init__(self) -> None:
        super().__init__(path="/swagger", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        assets = request.app.route_reverse(ASSETS_ROUTE, file_path="/").rstrip("/")
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec_url = json.dumps(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<style>body {{ margin: 0 }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{ url: {spec_url}, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null }});
</script>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(
            create_static_files_router(
                path="/assets",
                directories=[ASSETS],
                name=ASSETS_ROUTE,
                cache_control=CacheControlHeader(max_age=3600),
                include_in_schema=False,
            )
        )


def openapi_config(*, title: str, version: str, description: str) -> OpenAPIConfig:
    return DocumentedConfig(
        title=title,
        version=version,
        description=description,
        components=Components(security_schemes=dict(SECURITY_SCHEMES)),
        render_plugins=[SwaggerPage()],
    )
