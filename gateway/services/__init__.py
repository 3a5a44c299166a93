"""Every background loop of a gateway process, each one module with one `run_…` entry point,
started and supervised by the runtime. Routes may call the services' public functions; the
services never import routes."""

from __future__ import annotations

from core import Settings

from ..runtime import Service
from .event_pruner import run_event_pruner
from .history import run_history
from .job_pruner import run_job_pruner
from .metrics_snapshot import run_metrics_snapshots
from .nonces import run_nonce_pruner
from .promoter import run_promoter
from .reaper import run_reaper
from .scheduler import run_scheduler
from .stats import run_stats
from .webhook_publisher import run_webhook_publisher


def services_for(settings: Settings) -> list[Service]:
    """The services one gateway process runs with these settings."""
    services = [
        Service("promoter", run_promoter),
        Service("reaper", run_reaper),
        Service("nonce-pruner", run_nonce_pruner),
        Service("stats", run_stats),
        Service("scheduler", run_scheduler),
        Service("event-pruner", run_event_pruner),
        Service("job-pruner", run_job_pruner),
        Service("webhook-publisher", run_webhook_publisher),
        Service("console-history", run_history),
    ]
    if settings.metrics_dir is not None:
        services.append(Service("metrics-snapshot", run_metrics_snapshots))
    return services


__all__ = ["services_for"]
