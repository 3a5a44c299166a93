"""The client side of the Job Orchestrator: submit jobs, run workers, follow events, over signed HTTP.

Usable without the server packages: it needs only `core` (wire types, signing), aiohttp and
msgspec.
"""

from core.wire import (
    AckComplete,
    AckFail,
    Consumer,
    Event,
    EventPage,
    Job,
    JobSubmit,
    LeasedJob,
    Schedule,
    Tenant,
    TenantCreated,
    Webhook,
)

from ._admin import AdminClient
from ._errors import (
    ApiError,
    Cancel,
    Conflict,
    Forbidden,
    Gone,
    InvalidRequest,
    NotFound,
    Retry,
    SdkError,
    Snooze,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from ._events import ConsumerClient, EventsClient, verify_webhook
from ._outcome import Handler, Outcome, current_job
from ._producer import ProducerClient
from ._runner import WorkerRunner
from ._sync import SyncProducerClient
from ._tasks import Task, Tasks
from ._worker import WorkerClient

__all__ = [
    "AckComplete",
    "AckFail",
    "AdminClient",
    "ApiError",
    "Cancel",
    "Conflict",
    "Consumer",
    "ConsumerClient",
    "Event",
    "EventPage",
    "EventsClient",
    "Forbidden",
    "Gone",
    "Handler",
    "InvalidRequest",
    "Job",
    "JobSubmit",
    "LeasedJob",
    "NotFound",
    "Outcome",
    "ProducerClient",
    "Retry",
    "Schedule",
    "SdkError",
    "Snooze",
    "SyncProducerClient",
    "Task",
    "Tasks",
    "Tenant",
    "TenantCreated",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "Webhook",
    "WorkerClient",
    "WorkerRunner",
    "current_job",
    "verify_webhook",
]
