"""Traces: a submit made inside a span is one trace from the producer through the gateway's
request span to the worker's handler span; the gateway's spans follow the HTTP semantic
conventions; OTLP export is an extra, and its absence one line at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import db
from core import Settings
from core.states import JobState
from gateway.telemetry import tracing
from sdk import ProducerClient, WorkerClient, WorkerRunner

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually, fetch, free_port

ROOT = Path(__file__).resolve().parents[1]


class _ProcessSpans:
    """The test process's global tracer provider, where the producer's spans and the SDK's
    handler spans go. OpenTelemetry lets a process set it only once, so it is set on first use
    and its exporter emptied around each test."""

    exporter = InMemorySpanExporter()
    installed = False

    @classmethod
    def install(cls) -> InMemorySpanExporter:
        if not cls.installed:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                current.add_span_processor(SimpleSpanProcessor(cls.exporter))
            else:
                provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
                provider.add_span_processor(SimpleSpanProcessor(cls.exporter))
                trace.set_tracer_provider(provider)
            cls.installed = True
        cls.exporter.clear()
        return cls.exporter


@pytest.fixture
def process_spans() -> Iterator[InMemorySpanExporter]:
    exporter = _ProcessSpans.install()
    yield exporter
    exporter.clear()


class TracedGateway:
    def __init__(self, gw: InProcessGateway, exporter: InMemorySpanExporter) -> None:
        self.gw = gw
        self.exporter = exporter

    async def spans(self, match: Callable[[ReadableSpan], bool], count: int = 1) -> list[ReadableSpan]:
        """The gateway's ended spans that `match`, once there are `count` of them (a request's
        span ends just after its response went out)."""

        async def found() -> list[ReadableSpan] | None:
            self.gw.runtime.tracing.flush()
            hits = [s for s in self.exporter.get_finished_spans() if match(s)]
            return hits if len(hits) >= count else None

        return await eventually(found, timeout=10)


@pytest.fixture
async def traced(settings: Settings) -> AsyncIterator[TracedGateway]:
    """A gateway whose request spans go to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    gw = InProcessGateway(settings)
    await gw.start()
    gw.runtime.tracing = tracing.Tracing(exporter)
    try:
        yield TracedGateway(gw, exporter)
    finally:
        await gw.stop()


@pytest.fixture
async def traced_api(traced: TracedGateway) -> AsyncIterator[Api]:
    client = Api(traced.gw.url, ADMIN_TOKEN)
    try:
        yield client
    finally:
        await client.close()


def named(name: str, **attributes: Any) -> Callable[[ReadableSpan], bool]:
    return lambda s: s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())


def traceparent_of(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


# --- one trace: producer → gateway → worker ---------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_submit_inside_a_span_is_one_trace_through_the_gateway_to_the_workers_handler(
    traced: TracedGateway, traced_api: Api, process_spans: InMemorySpanExporter
) -> None:
    key = await traced_api.tenant("tenant-a")
    producer = ProducerClient(traced.gw.url, api_key=key)
    ran: list[int] = []

    async def handler(payload: dict[str, Any]) -> str:
        ran.append(trace.get_current_span().get_span_context().trace_id)
        return "done"

    worker = WorkerClient(traced.gw.url, worker_id="w-traced", api_key=key)
    runner = WorkerRunner(worker, handler, wait_ms=200)
    try:
        with trace.get_tracer("tests.producer").start_as_current_span("produce"):
            job = await producer.submit({"n": 1}, kind="traced")
        task = asyncio.create_task(runner.run())
        try:
            done = await producer.wait(job.id, timeout_s=20)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    finally:
        await producer.close()
        await worker.close()
    assert done.state is JobState.SUCCEEDED

    (produce,) = [s for s in process_spans.get_finished_spans() if s.name == "produce"]
    (submit,) = await traced.spans(named("POST /v1/jobs"))
    (handled,) = [s for s in process_spans.get_finished_spans() if s.name == "job traced"]
    trace_id = produce.context.trace_id if produce.context else 0
    assert trace_id
    assert {s.context.trace_id for s in (produce, submit, handled) if s.context} == {trace_id}
    assert ran == [trace_id]
    # The parent links: producer span → gateway server span → worker handler span.
    assert submit.parent is not None and produce.context is not None
    assert submit.parent.span_id == produce.context.span_id and submit.parent.is_remote
    assert handled.parent is not None and submit.context is not None
    assert handled.parent.span_id == submit.context.span_id
    assert job.traceparent == traceparent_of(submit)
    assert submit.kind is SpanKind.SERVER and handled.kind is SpanKind.CONSUMER
    assert (handled.attributes or {}).get("orch.job_id") == job.id


async def test_the_sdk_sends_the_active_span_and_nothing_without_one(
    api: Api, process_spans: InMemorySpanExporter
) -> None:
    key = await api.tenant("tenant-a")
    async with ProducerClient(api.url, api_key=key) as producer:
        plain = await producer.submit({})
        with trace.get_tracer("tests.producer").start_as_current_span("produce") as span:
            inside = await producer.submit({})
            ctx = span.get_span_context()
        after = await producer.submit({})
    # The gateway traces nothing here, so it stores the header as the SDK sent it.
    assert inside.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert plain.traceparent is None and after.traceparent is None


def _unimportable(root: Path, package: str) -> Path:
    """A folder that, first on PYTHONPATH, makes `package` fail to import as if not installed."""
    folder = root / "blocked"
    parts = package.split(".")
    target = folder.joinpath(*parts)
    target.mkdir(parents=True)
    # The parents stay namespace packages, so the installed parts of them still import.
    (target / "__init__.py").write_text(f"raise ImportError('{package} is not installed here')\n")
    return folder


WITHOUT_OTEL = """
import asyncio, sys

from sdk import ProducerClient, WorkerClient, WorkerRunner

async def main(url: str, key: str, traced_job: str) -> None:
    async with ProducerClient(url, api_key=key) as producer:
        job = await producer.submit({"n": 1}, kind="plain")
        seen = []

        async def handler(payload):
            seen.append(payload)

        worker = WorkerClient(url, worker_id="w-plain", api_key=key)
        runner = WorkerRunner(worker, handler, wait_ms=200)
        task = asyncio.create_task(runner.run())
        try:
            for job_id in (job.id, traced_job):
                done = await producer.wait(job_id, timeout_s=20)
                assert done.state == "succeeded", done
        finally:
            runner.stop()
            await task
            await worker.close()
    assert job.traceparent is None
    assert not any(name.startswith("opentelemetry") for name in sys.modules)
    print("ok", len(seen))

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.timeout(60)
async def test_the_sdk_works_where_opentelemetry_is_not_installed(api: Api, tmp_path: Path) -> None:
    key = await api.tenant("tenant-a")
    # A job that carries a trace, so the handler's span helper looks for OpenTelemetry too.
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced_job = (await api.signed_with_headers(key, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": tp})).body
    assert traced_job["traceparent"] == tp
    env = {**os.environ, "PYTHONPATH": str(_unimportable(tmp_path, "opentelemetry"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WITHOUT_OTEL,
        api.url,
        key,
        traced_job["id"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", "2"]


# --- the gateway's spans ----------------------------------------------------------------------


async def test_gateway_spans_carry_the_http_conventions_and_the_request_ids(
    traced: TracedGateway, traced_api: Api
) -> None:
    key = await traced_api.tenant("tenant-a")
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    r = await traced_api.signed_with_headers(
        key, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    assert r.status == 201
    job_id = r.body["id"]
    assert (await traced_api.signed(key, "GET", f"/v1/jobs/{job_id}")).status == 200
    assert (await traced_api.signed(key, "GET", "/v1/jobs/999999999")).status == 404
    assert (await traced_api.signed(key, "POST", "/v1/queues/emails/pause")).status == 200

    (submit,) = await traced.spans(named("POST /v1/jobs"))
    assert submit.kind is SpanKind.SERVER
    assert submit.context is not None and submit.context.trace_id == int(trace_id, 16)
    assert submit.parent is not None and submit.parent.span_id == int(parent_id, 16)
    assert dict(submit.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v1/jobs",
        "url.path": "/v1/jobs",
        "url.scheme": "http",
        "http.response.status_code": 201,
        "orch.tenant": "tenant-a",
    }
    assert submit.status.status_code is StatusCode.UNSET
    assert r.body["traceparent"] == traceparent_of(submit)

    (got,) = await traced.spans(named("GET /v1/jobs/{job_id}", **{"url.path": f"/v1/jobs/{job_id}"}))
    assert (got.attributes or {})["orch.job_id"] == job_id
    assert (got.attributes or {})["http.response.status_code"] == 200
    assert (got.attributes or {})["http.route"] == "/v1/jobs/{job_id}"
    assert got.parent is None  # no traceparent sent: a trace of its own

    (missing,) = await traced.spans(named("GET /v1/jobs/{job_id}", **{"orch.job_id": "999999999"}))
    assert (missing.attributes or {})["http.response.status_code"] == 404
    assert missing.status.status_code is StatusCode.UNSET  # a client's error is no server error
    assert not missing.events

    (paused,) = await traced.spans(named("POST /v1/queues/{queue}/pause"))
    assert (paused.attributes or {})["orch.queue"] == "emails"
    assert (paused.attributes or {})["orch.tenant"] == "tenant-a"


@contextlib.asynccontextmanager
async def database_unavailable(database_url: str) -> AsyncIterator[None]:
    """No connection to the test's database is allowed, and those open are ended, until the block ends."""
    name = urlsplit(database_url).path.lstrip("/")
    admin_dsn = db.with_database(database_url, "postgres")
    await fetch(admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await fetch(
            admin_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        yield
    finally:
        await fetch(admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.timeout(60)
async def test_a_5xx_span_is_an_error_with_its_exception(
    traced: TracedGateway, traced_api: Api, settings: Settings
) -> None:
    assert (await traced_api.admin("GET", "/v1/admin/tenants")).status == 200
    async with database_unavailable(settings.database_url or ""):
        r = await traced_api.admin("GET", "/v1/admin/tenants")
    assert r.status == 503, r.body

    (ok, failed) = await traced.spans(named("GET /v1/admin/tenants"), count=2)
    assert ok.status.status_code is StatusCode.UNSET
    attributes = failed.attributes or {}
    assert attributes["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    (event,) = failed.events
    assert event.name == "exception"
    exc_type = str((event.attributes or {})["exception.type"])
    assert exc_type.startswith("asyncpg.") and attributes["error.type"] == exc_type
    assert "Traceback" in str((event.attributes or {})["exception.stacktrace"])


# --- exporters --------------------------------------------------------------------------------


def test_exporter_names_are_checked_in_one_line() -> None:
    assert tracing.check_exporter(None) is None
    assert tracing.check_exporter("console") is None
    assert tracing.check_exporter("zipkin") == "ORCH_TRACES must be console or otlp, not 'zipkin'"


def test_otlp_without_the_extra_is_named_by_the_check(tmp_path: Path) -> None:
    blocked = _unimportable(tmp_path, "opentelemetry.exporter.otlp")
    out = subprocess.run(
        [sys.executable, "-c", "from gateway.telemetry import tracing; print(tracing.check_exporter('otlp'))"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(blocked)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == tracing.NEEDS_OTLP_EXTRA
    assert tracing.NEEDS_OTLP_EXTRA == "ORCH_TRACES=otlp needs the otlp extra: pip install 'job-orchestrator[otlp]'"


@pytest.mark.timeout(60)
def test_serve_with_otlp_but_without_the_extra_says_so_in_one_line(database_url: str, tmp_path: Path) -> None:
    blocked = _unimportable(tmp_path, "opentelemetry.exporter.otlp")
    env = {
        **os.environ,
        "PYTHONPATH": str(blocked),
        "DATABASE_URL": database_url,
        "ORCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "ORCH_TRACES": "otlp",
        "ORCH_DATA_DIR": str(tmp_path / "data"),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == f"orchestrator: {tracing.NEEDS_OTLP_EXTRA}\n"
    assert "Traceback" not in refused.stdout
