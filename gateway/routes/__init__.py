"""The HTTP routes: one module per resource, Litestar controllers and nothing else."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from ..ui import UI_ROUTES
from .admin import AdminController
from .events import ConsumersController, EventsController
from .jobs import JobsController, RetryPolicyController
from .ops import healthz, metrics, readyz
from .queues import AdminQueuesController, QueuesController
from .retention import RetentionController
from .schedules import SchedulesController
from .webhooks import WebhooksController
from .workers import WorkersController

ROUTES: list[ControllerRouterHandler] = [
    JobsController,
    RetryPolicyController,
    RetentionController,
    SchedulesController,
    WorkersController,
    EventsController,
    ConsumersController,
    WebhooksController,
    AdminController,
    QueuesController,
    AdminQueuesController,
    healthz,
    readyz,
    metrics,
    *UI_ROUTES,
]

__all__ = ["ROUTES"]
