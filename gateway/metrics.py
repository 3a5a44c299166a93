"""OpenTelemetry instruments of one gateway process, exported in Prometheus text form."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

# Seconds, from sub-millisecond lease wake-ups to minute-long waits.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(registry=self.registry)
        self._provider = MeterProvider(
            resource=Resource.create({"service.name": "orchestrator-gateway"}),
            metric_readers=[self._reader],
            views=[
                View(
                    instrument_type=None,
                    instrument_name="*_seconds",
                    aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
                )
            ],
        )
        m = self._provider.get_meter("orchestrator")
        self.jobs_submitted = m.create_counter("orch_jobs_submitted", description="Jobs created by submits")
        self.jobs_leased = m.create_counter("orch_jobs_leased", description="Jobs handed to workers")
        self.jobs_succeeded = m.create_counter("orch_jobs_succeeded", description="Jobs completed")
        self.jobs_failed = m.create_counter("orch_jobs_failed", description="Failures that scheduled a retry")
        self.jobs_dead = m.create_counter("orch_jobs_dead", description="Jobs that ended dead")
        self.jobs_cancelled = m.create_counter("orch_jobs_cancelled", description="Jobs cancelled")
        self.jobs_replayed = m.create_counter("orch_jobs_replayed", description="Dead or cancelled jobs replayed")
        self.jobs_reaped = m.create_counter("orch_jobs_reaped", description="Expired leases recovered")
        self.jobs_promoted = m.create_counter("orch_jobs_promoted", description="Scheduled jobs made ready")
        self.schedule_fires = m.create_counter("orch_schedule_fires", description="Jobs created by cron schedules")
        self.lease_requests = m.create_counter("orch_lease_requests", description="Lease requests by outcome")
        self.auth_failures = m.create_counter("orch_auth_failures", description="Refused credentials by reason")
        self.fencing_rejections = m.create_counter("orch_fencing_rejections", description="Stale lease tokens refused")
        self.notifications = m.create_counter("orch_notifications_received", description="NOTIFY messages by channel")
        self.listen_reconnects = m.create_counter(
            "orch_listen_reconnects", description="LISTEN connection re-established"
        )
        self.http_duration = m.create_histogram(
            "orch_http_request_duration_seconds", unit="s", description="HTTP requests by route and status"
        )
        self.lease_statement = m.create_histogram(
            "orch_lease_statement_duration_seconds", unit="s", description="One lease attempt against the database"
        )
        self.long_poll_wait = m.create_histogram(
            "orch_long_poll_wait_seconds", unit="s", description="Time a lease request waited"
        )

    def observe_gauge(self, name: str, description: str, read: Callable[[], float]) -> None:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(read())

        self._provider.get_meter("orchestrator").create_observable_gauge(
            name, callbacks=[callback], description=description
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
