"""The last minutes of work, for the operator's console: every few seconds, the counters of jobs
submitted, leased, succeeded, failed and dead and the queue-wait histogram, in total and per
tenant, read from this process's metrics or, with several processes behind one port, from the
snapshots of all of them merged. Kept in memory; nothing here touches the database."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ..runtime import Runtime
from ..telemetry import merge
from .metrics_snapshot import render_metrics

log = logging.getLogger("orchestrator.gateway")

SAMPLE_SECONDS = 5.0
KEEP_SECONDS = 15 * 60.0
# Per-tenant figures are kept for a shorter span: a deployment may have very many tenants.
TENANT_KEEP_SECONDS = 5 * 60.0

COUNTERS = {
    "orch_jobs_submitted_total": "submitted",
    "orch_jobs_leased_total": "leased",
    "orch_jobs_succeeded_total": "succeeded",
    "orch_jobs_failed_total": "failed",
    "orch_jobs_dead_total": "dead",
}
WAIT = "orch_queue_wait_seconds"
_FAMILIES = (*COUNTERS, WAIT)
_PREFIXES = (*COUNTERS, WAIT + "_bucket", WAIT + "_sum", WAIT + "_count")
_COMMENTS = tuple(f"# {kind} {name} " for name in _FAMILIES for kind in ("TYPE", "HELP"))


@dataclass
class Figures:
    """Cumulative counts since the processes started (they only grow, except across a restart)."""

    submitted: float = 0.0
    leased: float = 0.0
    succeeded: float = 0.0
    failed: float = 0.0
    dead: float = 0.0
    wait_count: float = 0.0
    wait_sum: float = 0.0
    # Cumulative queue-wait bucket counts by upper bound (seconds; inf last): in the total only.
    wait_buckets: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock, seconds since the epoch
    total: Figures
    tenants: dict[str, Figures] | None  # None once older than TENANT_KEEP_SECONDS, or with no tenant label


def _wanted(text: str) -> str:
    """The lines of an exposition that this reads, so a merge parses little more than them."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_PREFIXES) or line.startswith(_COMMENTS))


def parse(text: str, *, per_tenant: bool = True) -> tuple[Figures, dict[str, Figures] | None]:
    """The total and per-tenant figures of a Prometheus exposition (None per tenant when the
    metrics carry no tenant label)."""
    total = Figures()
    tenants: dict[str, Figures] = {}
    samples = (x for family in text_string_to_metric_families(_wanted(text)) for x in family.samples)
    for name, labels, value, *_ in samples:
        tenant = labels.get("tenant")
        targets = [total] if tenant is None else [total, tenants.setdefault(tenant, Figures())]
        short = COUNTERS.get(name)
        for f in targets:
            if short is not None:
                setattr(f, short, getattr(f, short) + value)
            elif name == WAIT + "_count":
                f.wait_count += value
            elif name == WAIT + "_sum":
                f.wait_sum += value
        if name == WAIT + "_bucket" and "le" in labels:
            bound = float(labels["le"])  # "+Inf" parses as inf
            total.wait_buckets[bound] = total.wait_buckets.get(bound, 0.0) + value
    return total, (tenants if per_tenant else None)


def read_exposition(rt: Runtime) -> str:
    """This process's metrics, or with several processes behind one port, all of theirs merged."""
    if rt.settings.metrics_dir is None:
        return rt.metrics.render().decode()
    render_metrics(rt)  # writes this process's snapshot first, so its latest figures count
    texts = merge.read_snapshots(Path(rt.settings.metrics_dir))
    return merge.merge([_wanted(t) for t in texts], kinds=frozenset({"counter", "histogram"}))


class History:
    def __init__(self) -> None:
        self.samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and self.samples[0].at < sample.at - KEEP_SECONDS:
            self.samples.popleft()
        # Drop the per-tenant figures of the samples past their span (at most one a call).
        for i, old in enumerate(self.samples):
            if old.at >= sample.at - TENANT_KEEP_SECONDS - SAMPLE_SECONDS:
                break
            if old.tenants is not None:
                self.samples[i] = Sample(old.at, old.total, None)
                break


_histories: weakref.WeakKeyDictionary[Runtime, History] = weakref.WeakKeyDictionary()


def history_of(rt: Runtime) -> History:
    found = _histories.get(rt)
    if found is None:
        found = _histories[rt] = History()
    return found


async def sample(rt: Runtime) -> Sample:
    """Read the figures now and add them to the runtime's history."""
    text = read_exposition(rt)
    # A large exposition takes a while to read: not on the event loop.
    total, tenants = await asyncio.to_thread(parse, text, per_tenant=rt.settings.metrics_tenant_label)
    s = Sample(time.time(), total, tenants)
    history_of(rt).add(s)
    return s


async def run_history(rt: Runtime) -> None:
    while True:
        try:
            await sample(rt)
        except OSError as exc:  # the shared metrics folder is gone or unreadable
            log.warning("sampling the console's history failed: %r", exc)
        await asyncio.sleep(SAMPLE_SECONDS)
