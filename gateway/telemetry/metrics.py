"""OpenTelemetry instruments of one gateway process, exported in Prometheus text form."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core import JobState
from core.wire import Job, LeasedJob
from db import Stats

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


LabelKey = tuple[tuple[str, str], ...]

# Label values tenants choose (queue, consumer and webhook names) are capped per tenant: past the
# cap they read OTHER, so one tenant cannot grow the series without bound (docs/observability.md).
QUEUE_LABELS_PER_TENANT = 20
CONSUMER_LABELS_PER_TENANT = 20
WEBHOOK_LABELS_PER_TENANT = 20
OTHER = "_other"  # no name can be this: names start with a letter or digit
ALL_QUEUES = "*"  # an operator's replay of a whole dead-letter queue: not a tenant's choice


class LabelCap:
    """The first `cap` values of a label seen per tenant keep their name; later ones read OTHER.

    With `share(folder)` the processes behind one port admit values through one file there, so
    they all fold the same names. Cheap on the hot path: a known value is one dict and one set
    lookup, and the file is read only while a tenant still has room, at most `cap` + 1 times.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._admitted: dict[str, set[str]] = {}
        self._file: Path | None = None

    def value(self, tenant: str, name: str) -> str:
        seen = self._admitted.get(tenant)
        if seen is not None and name in seen:
            return name
        return self._admit(tenant, name)

    def _admit(self, tenant: str, name: str) -> str:
        if name == ALL_QUEUES:
            return name
        seen = self._admitted.setdefault(tenant, set())
        if len(seen) >= self.cap:
            return OTHER
        if self._file is None:
            seen.add(name)
            return name
        shared = self._admit_shared(tenant, name)
        seen |= shared
        return name if name in seen else OTHER

    def _admit_shared(self, tenant: str, name: str) -> set[str]:
        assert self._file is not None
        with _locked(self._file.with_suffix(".lock")):
            admitted: set[str] = set()
            with contextlib.suppress(FileNotFoundError):
                for line in self._file.read_text().splitlines():
                    t, n = json.loads(line)
                    if t == tenant:
                        admitted.add(n)
            if name not in admitted and len(admitted) < self.cap:
                with self._file.open("a") as f:
                    f.write(json.dumps([tenant, name]) + "\n")
                admitted.add(name)
        return admitted

    def share(self, file: Path) -> None:
        """Admit through `file` from now on; the values this process admitted so far go there first."""
        if self._file == file:
            return
        self._file = file
        for tenant, names in self._admitted.items():
            for name in sorted(names):
                names |= self._admit_shared(tenant, name)


@contextlib.contextmanager
def _locked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def capped_by_name(items: Iterable[tuple[str, str, float]], cap: int) -> dict[tuple[str, str], float]:
    """(tenant, name, value) rows with at most `cap` names per tenant, the alphabetically first (the
    same in every process reading the same rows); the others are folded into OTHER, taking the max."""
    by_tenant: dict[str, dict[str, float]] = {}
    for tenant, name, value in items:
        by_tenant.setdefault(tenant, {})[name] = value
    out: dict[tuple[str, str], float] = {}
    for tenant, values in by_tenant.items():
        for i, name in enumerate(sorted(values)):
            if i < cap:
                out[(tenant, name)] = values[name]
            else:
                out[(tenant, OTHER)] = max(out.get((tenant, OTHER), 0.0), values[name])
    return out


class Tally:
    """A counter kept as plain sums by label set and read by an OpenTelemetry observable counter
    at collection: `Counter.add` costs 10-25 µs a call (attribute cleaning and hashing), and the
    hot paths count every job."""

    def __init__(self, meter: Meter, name: str, description: str) -> None:
        self._sums: dict[LabelKey, float] = {}
        meter.create_observable_counter(name, callbacks=[self._observe], description=description)

    def add(self, amount: float, labels: Mapping[str, str] | None = None) -> None:
        key = tuple(labels.items()) if labels else ()
        self._sums[key] = self._sums.get(key, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        merged: dict[LabelKey, float] = {}
        for key, value in list(self._sums.items()):
            k = tuple(sorted(key))
            merged[k] = merged.get(k, 0) + value
        for key, value in merged.items():
            yield Observation(value, dict(key))


class Histogram:
    """A latency histogram bucketed in this process and rendered into the Prometheus registry,
    for the same reason as `Tally`: one is recorded per job and per request."""

    def __init__(self, name: str, description: str, *, unlabelled: bool = False) -> None:
        self.name = name
        self.description = description
        self._series: dict[LabelKey, list[float]] = {}  # bucket counts, then +Inf, then the sum
        if unlabelled:  # its one series exists before the first record, so rate() has data
            self._series[()] = [0.0] * (len(_LATENCY_BUCKETS) + 2)

    def record(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = tuple(labels.items()) if labels else ()
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        series[bisect_left(_LATENCY_BUCKETS, value)] += 1
        series[-1] += value

    def metric(self) -> Metric:
        m = Metric(self.name, self.description, "histogram")
        for key, series in list(self._series.items()):
            labels = dict(sorted(key))
            cumulative = 0.0
            for bound, n in zip((*_LATENCY_BUCKETS, float("inf")), series[:-1], strict=True):
                cumulative += n
                m.add_sample(f"{self.name}_bucket", {**labels, "le": _le(bound)}, cumulative)
            m.add_sample(f"{self.name}_count", labels, cumulative)
            m.add_sample(f"{self.name}_sum", labels, series[-1])
        return m


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Histograms(Collector):
    def __init__(self) -> None:
        self.all: list[Histogram] = []

    def collect(self) -> Iterator[Metric]:
        for h in self.all:
            yield h.metric()


# In the folder shared by the processes behind one port: the queue names admitted to a label.
QUEUE_LABELS_FILE = "queue-labels.jsonl"


class Metrics:
    def __init__(self, *, tenant_label: bool = True) -> None:
        # Deployments with very many tenants drop the tenant label to bound the series count.
        self._tenant_label = tenant_label
        self._stats: Stats | None = None
        self._stats_at = time.monotonic()  # of the last refresh; before the first, of the start
        self.queue_labels = LabelCap(QUEUE_LABELS_PER_TENANT)
        self.registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(registry=self.registry)
        self._histograms = _Histograms()
        self.registry.register(self._histograms)
        self._provider = MeterProvider(
            resource=Resource.create({"service.name": "orchestrator-gateway"}),
            metric_readers=[self._reader],
        )
        m = self._provider.get_meter("orchestrator")
        self.jobs_submitted = Tally(m, "orch_jobs_submitted", "Jobs created by submits")
        self.jobs_leased = Tally(m, "orch_jobs_leased", "Jobs handed to workers")
        self.jobs_succeeded = Tally(m, "orch_jobs_succeeded", "Jobs completed")
        self.jobs_failed = Tally(m, "orch_jobs_failed", "Failures that scheduled a retry")
        self.jobs_dead = Tally(m, "orch_jobs_dead", "Jobs that ended dead")
        self.jobs_cancelled = Tally(m, "orch_jobs_cancelled", "Jobs cancelled")
        self.jobs_replayed = Tally(m, "orch_jobs_replayed", "Dead or cancelled jobs replayed")
        self.jobs_reaped = Tally(m, "orch_jobs_reaped", "Expired leases recovered")
        self.jobs_promoted = Tally(m, "orch_jobs_promoted", "Scheduled jobs made ready")
        self.jobs_released = Tally(m, "orch_jobs_released", "Leased jobs given back because their client went away")
        self.schedule_fires = Tally(m, "orch_schedule_fires", "Jobs created by cron schedules")
        self.lease_requests = Tally(m, "orch_lease_requests", "Lease requests by outcome")
        self.auth_failures = Tally(m, "orch_auth_failures", "Refused credentials by reason")
        self.fencing_rejections = Tally(m, "orch_fencing_rejections", "Stale lease tokens refused")
        self.notifications = Tally(m, "orch_notifications_received", "NOTIFY messages by channel")
        self.listen_reconnects = Tally(m, "orch_listen_reconnects", "LISTEN connection re-established")
        self.events_served = Tally(m, "orch_events_served", "Events handed to readers by transport")
        self.events_pruned = Tally(m, "orch_events_pruned", "Events deleted by retention")
        self.webhook_deliveries = Tally(m, "orch_webhook_deliveries", "Webhook delivery attempts by outcome")
        self.webhook_leases = Tally(m, "orch_webhook_leases", "Webhook endpoint leases by outcome")
        self.service_restarts = Tally(m, "orch_service_restarts", "Background services restarted after a crash")
        self.jobs_pruned = Tally(m, "orch_jobs_pruned", "Finished jobs deleted by retention, by final state")
        for state in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.DEAD):
            self.jobs_pruned.add(0, {"state": state.value})
        # Seconds since the most overdue finished job fell due, as the pruner last saw it; the
        # processes not holding the pruning lock report 0.
        self.job_retention_lag = 0.0
        self.observe_gauge(
            "orch_job_retention_lag_seconds",
            "How long the most overdue finished job has been past its retention",
            lambda: self.job_retention_lag,
        )
        # Series with known label values exist from the start, so rate() has data before the first event.
        for outcome in ("delivered", "failed", "parked"):
            self.webhook_deliveries.add(0, {"outcome": outcome})
        for outcome in ("claimed", "taken_over", "lost"):
            self.webhook_leases.add(0, {"outcome": outcome})
        for via in ("poll", "stream", "consumer"):
            self.events_served.add(0, {"via": via})
        self.queue_wait = self._histogram("orch_queue_wait_seconds", "Ready (run_at) to leased, per lease")
        self.run_time = self._histogram("orch_run_time_seconds", "Leased to finished")
        self.end_to_end = self._histogram("orch_end_to_end_seconds", "Submitted to finished (succeeded or dead)")
        self._db_gauges(m)
        # Counters without labels start at zero, so their series exist before the first event.
        # (orch_service_restarts_total's zero has no labels: the services are named when they crash.)
        for counter in (
            self.fencing_rejections,
            self.listen_reconnects,
            self.jobs_reaped,
            self.jobs_promoted,
            self.jobs_released,
            self.events_pruned,
            self.service_restarts,
        ):
            counter.add(0)
        self.http_duration = self._histogram("orch_http_request_duration_seconds", "HTTP requests by route and status")
        self.lease_statement = self._histogram(
            "orch_lease_statement_duration_seconds", "One lease attempt against the database", unlabelled=True
        )
        self.long_poll_wait = self._histogram(
            "orch_long_poll_wait_seconds", "Time a lease request waited", unlabelled=True
        )
        self.webhook_duration = self._histogram(
            "orch_webhook_delivery_duration_seconds", "One webhook POST, answered or not", unlabelled=True
        )

    def _histogram(self, name: str, description: str, *, unlabelled: bool = False) -> Histogram:
        h = Histogram(name, description, unlabelled=unlabelled)
        self._histograms.all.append(h)
        return h

    def labels(self, tenant_id: str, queue: str) -> dict[str, str]:
        q = self.queue_labels.value(tenant_id, queue)
        return {"tenant": tenant_id, "queue": q} if self._tenant_label else {"queue": q}

    def leased(self, jobs: Sequence[LeasedJob]) -> None:
        for job in jobs:
            labels = self.labels(job.tenant_id, job.queue)
            self.jobs_leased.add(1, labels)
            if job.started_at is not None:
                self.queue_wait.record(max(0.0, (job.started_at - job.run_at).total_seconds()), labels)

    def finished(self, job: Job) -> None:
        """Count a job that a complete, fail or cancel has just changed."""
        labels = self.labels(job.tenant_id, job.queue)
        counter = {
            JobState.SUCCEEDED: self.jobs_succeeded,
            JobState.DEAD: self.jobs_dead,
            JobState.CANCELLED: self.jobs_cancelled,
        }.get(job.state, self.jobs_failed)
        counter.add(1, labels)
        now = datetime.now(UTC)
        if job.started_at is not None:
            self.run_time.record(max(0.0, (now - job.started_at).total_seconds()), labels)
        if job.state in (JobState.SUCCEEDED, JobState.DEAD):
            self.end_to_end.record(max(0.0, (now - job.created_at).total_seconds()), labels)

    def set_stats(self, stats: Stats) -> None:
        self._stats = stats
        self._stats_at = time.monotonic()

    def last_stats(self) -> tuple[Stats | None, float]:
        """The figures the stats service read last (None before its first read), and their age in seconds."""
        return self._stats, time.monotonic() - self._stats_at

    def _db_gauges(self, m: Meter) -> None:
        def jobs(_o: CallbackOptions) -> Iterable[Observation]:
            # Without the tenant label several tenants' rows share a label set: add them up.
            counts: dict[LabelKey, int] = {}
            for row in self._stats.jobs if self._stats else ():
                key = tuple(sorted({**self.labels(row.tenant_id, row.queue), "state": row.state}.items()))
                counts[key] = counts.get(key, 0) + row.count
            for key, count in counts.items():
                yield Observation(count, dict(key))

        def oldest(_o: CallbackOptions) -> Iterable[Observation]:
            ages: dict[str, float] = {}
            for row in self._stats.jobs if self._stats else ():
                if row.oldest_ready_seconds is not None:
                    key = row.tenant_id if self._tenant_label else ""
                    ages[key] = max(ages.get(key, 0.0), row.oldest_ready_seconds)
            for tenant, age in ages.items():
                yield Observation(age, {"tenant": tenant} if self._tenant_label else {})

        def running(_o: CallbackOptions) -> Iterable[Observation]:
            counts: dict[str, int] = {}
            for row in self._stats.jobs if self._stats else ():
                if row.state == "running":
                    counts[row.tenant_id] = counts.get(row.tenant_id, 0) + row.count
            for t in self._stats.tenants if self._stats else ():
                yield Observation(counts.get(t.tenant_id, 0), {"tenant": t.tenant_id})

        def caps(_o: CallbackOptions) -> Iterable[Observation]:
            for t in self._stats.tenants if self._stats else ():
                if t.max_inflight is not None:
                    yield Observation(t.max_inflight, {"tenant": t.tenant_id})

        def weights(_o: CallbackOptions) -> Iterable[Observation]:
            for t in self._stats.tenants if self._stats else ():
                yield Observation(t.weight, {"tenant": t.tenant_id})

        m.create_observable_gauge("orch_db_jobs", [jobs], description="Open and dead jobs by tenant, queue, state")
        m.create_observable_gauge(
            "orch_db_oldest_ready_age_seconds", [oldest], unit="s", description="Age of the oldest ready job"
        )
        # Per tenant by nature: these follow the tenants, whatever the tenant-label setting.
        m.create_observable_gauge("orch_db_running", [running], description="Running jobs per tenant")
        m.create_observable_gauge("orch_db_max_inflight", [caps], description="In-flight cap per tenant")
        m.create_observable_gauge("orch_db_tenant_weight", [weights], description="Fair-share weight per tenant")

        def lags(_o: CallbackOptions) -> Iterable[Observation]:
            rows = ((b.tenant_id, b.name, b.events) for b in (self._stats.consumer_lags if self._stats else ()))
            for (tenant, name), events in capped_by_name(rows, CONSUMER_LABELS_PER_TENANT).items():
                yield Observation(events, {"tenant": tenant, "consumer": name})

        def backlogs(_o: CallbackOptions) -> Iterable[Observation]:
            rows = ((b.tenant_id, b.name, b.events) for b in (self._stats.webhook_backlogs if self._stats else ()))
            for (tenant, name), events in capped_by_name(rows, WEBHOOK_LABELS_PER_TENANT).items():
                yield Observation(events, {"tenant": tenant, "webhook": name})

        def stats_age(_o: CallbackOptions) -> Iterable[Observation]:
            yield Observation(time.monotonic() - self._stats_at)

        m.create_observable_gauge(
            "orch_db_consumer_lag_events", [lags], description="Events a durable consumer has not acknowledged"
        )
        m.create_observable_gauge(
            "orch_db_webhook_backlog_events", [backlogs], description="Events a webhook endpoint has yet to receive"
        )
        # The orch_db_* figures freeze when the database cannot be read: this says how old they are.
        m.create_observable_gauge(
            "orch_db_stats_age_seconds", [stats_age], unit="s", description="Age of the orch_db_* figures"
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
