"""W3C trace context: a producer's trace continues through the gateway into its jobs' workers.

Off unless `ORCH_TRACES` names an exporter (`console`, or `otlp` when the OTLP exporter package
is installed). Off, the submit's `traceparent` header is stored on its jobs as given; on, the
gateway's own request span is stored, as the child of the producer's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ValueError("ORCH_TRACES=otlp needs the opentelemetry-exporter-otlp-proto-http package") from exc
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    raise ValueError(f"ORCH_TRACES must be console or otlp, not {name!r}")


class Tracing:
    def __init__(self, exporter: str | None) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if exporter:
            self._provider = TracerProvider(resource=Resource.create({"service.name": "orchestrator-gateway"}))
            self._provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
            self._tracer = self._provider.get_tracer("orchestrator")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def request_span(self, name: str, headers: Mapping[str, str]) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        parent = propagate.extract(headers)
        with self._tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER):
            yield

    def traceparent(self, headers: Mapping[str, str]) -> str | None:
        """The trace context to store on jobs submitted by this request."""
        if self._tracer is None:
            given = headers.get("traceparent")
            return given if given is not None and TRACEPARENT.match(given) else None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get("traceparent")

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
