"""W3C trace context: a producer's trace continues through the gateway into its jobs' workers.

Off unless `ORCH_TRACES` names an exporter (`console`, or `otlp` with the `otlp` extra). Off, the
submit's `traceparent` header is stored on its jobs as given; on, each request runs in a server
span continuing the caller's trace, with the HTTP semantic conventions' attributes and the ids of
the request's log context, and that span is what submitted jobs store, as the workers' parent.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, cast

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from core import logfmt

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")

EXPORTERS = ("console", "otlp")
OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
NEEDS_OTLP_EXTRA = "ORCH_TRACES=otlp needs the otlp extra: pip install 'job-orchestrator[otlp]'"


def check_exporter(name: str | None) -> str | None:
    """What keeps `ORCH_TRACES=name` from working, in one line; None when it works (or is unset).
    For the command line to refuse to start before any server process does."""
    if not name:
        return None
    if name not in EXPORTERS:
        return f"ORCH_TRACES must be {' or '.join(EXPORTERS)}, not {name!r}"
    if name == "otlp":
        try:
            importlib.import_module(OTLP_MODULE)
        except ImportError:
            return NEEDS_OTLP_EXTRA
    return None


def _exporter(name: str) -> SpanExporter:
    problem = check_exporter(name)
    if problem is not None:
        raise ValueError(problem)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )

        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    return ConsoleSpanExporter()


RawHeaders = Iterable[tuple[bytes, bytes]]


class _AsgiHeaders(Getter[RawHeaders]):
    """Reads an ASGI scope's header list in place (names arrive lower-cased)."""

    def get(self, carrier: RawHeaders, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == name]
        return values or None

    def keys(self, carrier: RawHeaders) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_HEADERS = _AsgiHeaders()


class Tracing:
    """The gateway's tracer: `exporter` is a name from EXPORTERS, an exporter object, or None (off)."""

    def __init__(self, exporter: str | SpanExporter | None) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if exporter is None or exporter == "":
            return
        self._provider = TracerProvider(resource=Resource.create({"service.name": "orchestrator-gateway"}))
        chosen = _exporter(exporter) if isinstance(exporter, str) else exporter
        self._provider.add_span_processor(BatchSpanProcessor(chosen))
        self._tracer = self._provider.get_tracer("orchestrator")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one HTTP request in a server span named "METHOD route", a child of the caller's
        `traceparent`; ERROR with the exception recorded when it answers 5xx."""
        tracer = self._tracer
        if tracer is None:
            await app(scope, receive, send)
            return
        http = cast("HTTPScope", scope)  # the middleware traces HTTP requests only
        method: str = http["method"]
        route = http.get("path_template") or ""
        status = 0
        error: BaseException | None = None

        async def traced_send(message: Message) -> None:
            nonlocal status, error
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 500:
                    # Litestar turns an exception into its response inside the `except` block
                    # that caught it, so the exception is still the one being handled here.
                    error = sys.exc_info()[1]
            await send(message)

        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": http["path"],
            "url.scheme": http["scheme"],
        }
        if route:
            attributes["http.route"] = route
        with tracer.start_as_current_span(
            f"{method} {route}" if route else method,
            context=propagate.extract(http["headers"], getter=_HEADERS),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await app(scope, receive, traced_send)
            except Exception as exc:
                error = exc
                status = status or 500
                raise
            finally:
                _finish(span, http.get("path_params") or {}, status, error)

    def traceparent(self, headers: Mapping[str, str]) -> str | None:
        """The trace context to store on jobs submitted by this request."""
        if self._tracer is None:
            given = headers.get("traceparent")
            return given if given is not None and TRACEPARENT.match(given) else None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get("traceparent")

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span that has ended; False when the exporter did not finish in time."""
        return self._provider.force_flush(timeout_millis) if self._provider is not None else True

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def _finish(span: trace.Span, path_params: Mapping[str, Any], status: int, error: BaseException | None) -> None:
    """The attributes known once the request has run: auth and the routes fill the log context."""
    if status:
        span.set_attribute("http.response.status_code", status)
    ids = {
        "orch.tenant": logfmt.tenant_id.get() or path_params.get("tenant_id"),
        "orch.job_id": logfmt.job_id.get(),
        "orch.queue": path_params.get("queue"),
        "orch.worker_id": logfmt.worker_id.get(),
    }
    for name, value in ids.items():
        if value is not None:
            span.set_attribute(name, str(value))
    if status >= 500:
        span.set_attribute("error.type", _qualified(type(error)) if error is not None else str(status))
        if error is not None:
            span.record_exception(error)
        span.set_status(trace.StatusCode.ERROR, f"HTTP {status}")


def _qualified(cls: type[BaseException]) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
