"""The overview's figures, from what the gateway already keeps: the stats service's last read of
the open work (counted through the partial indexes of the open states, on its timer, not per
page) and the console's history of the counters. A page reads neither the jobs table nor the
metrics registry."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup

import db

from ..runtime import Runtime
from ..services import history
from . import charts, web

RECENT_SECONDS = 300.0  # the span of the per-tenant throughput, latency and share figures


@dataclass
class QueueRow:
    tenant_id: str
    queue: str
    ready: int = 0
    scheduled: int = 0
    running: int = 0
    dead: int = 0
    oldest_ready_seconds: float | None = None
    paused: bool = False


@dataclass
class TenantRow:
    id: str
    weight: int | None
    max_inflight: int | None
    queues: list[QueueRow] = field(default_factory=list)
    ready: int = 0
    running: int = 0
    dead: int = 0
    # Over the last RECENT_SECONDS, from the history (None: not known yet, or no tenant label).
    leased_per_s: float | None = None
    succeeded_per_s: float | None = None
    dead_per_s: float | None = None
    wait_mean: float | None = None
    lease_share: float | None = None
    due_share: float | None = None
    running_share: float | None = None

    @property
    def at_cap(self) -> bool:
        return self.max_inflight is not None and self.running >= self.max_inflight


@dataclass(frozen=True)
class Snapshot:
    """The last read of the open work, and how old it is."""

    stats: db.Stats | None
    age_seconds: float
    interval_seconds: float


def snapshot(rt: Runtime) -> Snapshot:
    stats, age = rt.metrics.last_stats()
    return Snapshot(stats, age, rt.settings.stats_interval_seconds)


def queue_rows(snap: Snapshot, paused: Iterable[tuple[str, str]] = ()) -> list[QueueRow]:
    """Per tenant and queue, the open work by state: the queues holding open or dead jobs, and
    the paused ones."""
    rows: dict[tuple[str, str], QueueRow] = {}
    for c in snap.stats.jobs if snap.stats else ():
        r = rows.setdefault((c.tenant_id, c.queue), QueueRow(c.tenant_id, c.queue))
        if c.state in ("ready", "scheduled", "running", "dead"):
            setattr(r, c.state, getattr(r, c.state) + c.count)
        if c.oldest_ready_seconds is not None:
            r.oldest_ready_seconds = max(r.oldest_ready_seconds or 0.0, c.oldest_ready_seconds)
    for key in paused:
        rows.setdefault(key, QueueRow(*key)).paused = True
    return [rows[k] for k in sorted(rows)]


def _window(samples: Sequence[history.Sample], span: float) -> tuple[history.Sample, history.Sample] | None:
    """The oldest sample within `span` of the newest that has per-tenant figures, and the newest."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    for s in samples:
        if s.at >= last.at - span - 1 and s is not last:
            return s, last
    return None


def _delta(new: float, old: float) -> float:
    return max(0.0, new - old)  # a process restarted without a retired snapshot: no negative rates


def tenant_rows(snap: Snapshot, queues: Sequence[QueueRow], samples: Sequence[history.Sample]) -> list[TenantRow]:
    limits = {t.tenant_id: t for t in snap.stats.tenants} if snap.stats else {}
    tenants: dict[str, TenantRow] = {}

    def row(tenant_id: str) -> TenantRow:
        if tenant_id not in tenants:
            t = limits.get(tenant_id)
            tenants[tenant_id] = TenantRow(
                tenant_id, None if t is None else t.weight, None if t is None else t.max_inflight
            )
        return tenants[tenant_id]

    for q in queues:
        t = row(q.tenant_id)
        t.queues.append(q)
        t.ready += q.ready
        t.running += q.running
        t.dead += q.dead
    window = _window([s for s in samples if s.tenants is not None], RECENT_SECONDS)
    if window is not None:
        old, new = window
        dt = max(new.at - old.at, 1e-9)
        old_tenants, new_tenants = old.tenants or {}, new.tenants or {}
        for tenant_id, f in new_tenants.items():
            before = old_tenants.get(tenant_id, history.Figures())
            leased = _delta(f.leased, before.leased)
            succeeded = _delta(f.succeeded, before.succeeded)
            dead = _delta(f.dead, before.dead)
            if leased == succeeded == dead == 0 and tenant_id not in tenants:
                continue  # idle through the whole window: nothing to show
            t = row(tenant_id)
            t.leased_per_s, t.succeeded_per_s, t.dead_per_s = leased / dt, succeeded / dt, dead / dt
            waits = _delta(f.wait_count, before.wait_count)
            t.wait_mean = _delta(f.wait_sum, before.wait_sum) / waits if waits else None
        for t in tenants.values():
            if t.leased_per_s is None:
                t.leased_per_s = t.succeeded_per_s = t.dead_per_s = 0.0
    _shares(list(tenants.values()))
    return sorted(tenants.values(), key=lambda t: t.id)


def _shares(tenants: Sequence[TenantRow]) -> None:
    """The fair-share picture: the tenants that wanted work (ready or running jobs now, or leases
    in the window) share the leases in proportion to their weights."""
    competing = [t for t in tenants if t.ready or t.running or (t.leased_per_s or 0) > 0]
    weights = sum(t.weight or 0 for t in competing)
    leased = sum(t.leased_per_s or 0 for t in competing)
    running = sum(t.running for t in competing)
    for t in competing:
        t.due_share = (t.weight or 0) / weights if weights else None
        t.lease_share = (t.leased_per_s or 0) / leased if leased else None
        t.running_share = t.running / running if running else None


def share_chart(tenants: Sequence[TenantRow]) -> Markup:
    rows = [
        charts.Share(t.id, t.lease_share, t.due_share, "at its cap" if t.at_cap else "")
        for t in sorted(tenants, key=lambda t: -(t.due_share or 0))
        if t.due_share is not None
    ][:20]
    return charts.share_bars("Share of leases per tenant against its weight", rows, "chart-shares")


def _rates(samples: Sequence[history.Sample], pick: str) -> list[tuple[float, float | None]]:
    now = samples[-1].at if samples else 0.0
    out: list[tuple[float, float | None]] = []
    for a, b in itertools.pairwise(samples):
        dt = b.at - a.at
        if dt <= 0:
            continue
        out.append((now - b.at, _delta(getattr(b.total, pick), getattr(a.total, pick)) / dt))
    return out


def _quantile(buckets_new: dict[float, float], buckets_old: dict[float, float], q: float) -> float | None:
    """The q-quantile of the observations between two readings of a cumulative histogram,
    interpolated within its bucket (an estimate, as Prometheus's histogram_quantile is)."""
    bounds = sorted(buckets_new)
    counts = [_delta(buckets_new[b], buckets_old.get(b, 0.0)) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if bound == float("inf"):
                return prev_bound  # beyond the largest bucket: its bound is all that is known
            span = c - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = bound, c
    return prev_bound


def _waits(samples: Sequence[history.Sample]) -> tuple[list[tuple[float, float | None]], ...]:
    now = samples[-1].at if samples else 0.0
    means: list[tuple[float, float | None]] = []
    p95s: list[tuple[float, float | None]] = []
    for a, b in itertools.pairwise(samples):
        n = _delta(b.total.wait_count, a.total.wait_count)
        ago = now - b.at
        means.append((ago, _delta(b.total.wait_sum, a.total.wait_sum) / n if n else None))
        p95s.append((ago, _quantile(b.total.wait_buckets, a.total.wait_buckets, 0.95) if n else None))
    return means, p95s


def throughput_chart(samples: Sequence[history.Sample]) -> Markup:
    return charts.line_chart(
        "Throughput: jobs per second",
        [
            charts.Series("submitted", "s-submitted", _rates(samples, "submitted")),
            charts.Series("started", "s-leased", _rates(samples, "leased")),
            charts.Series("succeeded", "s-succeeded", _rates(samples, "succeeded")),
            charts.Series("dead", "s-dead", _rates(samples, "dead")),
        ],
        span_seconds=history.KEEP_SECONDS,
        fmt=lambda v: f"{v:,.3g}/s",
        empty=f"collecting: a sample every {history.SAMPLE_SECONDS:.0f} s",
        chart_id="chart-throughput",
    )


def latency_chart(samples: Sequence[history.Sample]) -> Markup:
    means, p95s = _waits(samples)
    return charts.line_chart(
        "Latency: ready to started (queue wait)",
        [charts.Series("mean", "s-mean", means), charts.Series("p95 (estimate)", "s-p95", p95s)],
        span_seconds=history.KEEP_SECONDS,
        fmt=lambda v: web.duration(v) if v else "0",
        empty="no job started in the last minutes",
        chart_id="chart-latency",
    )
