"""The client side of the Job Orchestrator: submit jobs, run workers, over signed HTTP.

Usable without the server packages: it needs only `core` (wire types, signing), aiohttp and
msgspec.
"""

from core.wire import AckComplete, AckFail, Job, JobSubmit, LeasedJob

from ._errors import (
    ApiError,
    Cancel,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Retry,
    SdkError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ._producer import ProducerClient
from ._runner import Handler, WorkerRunner
from ._worker import WorkerClient

__all__ = [
    "AckComplete",
    "AckFail",
    "ApiError",
    "Cancel",
    "Conflict",
    "Forbidden",
    "Handler",
    "InvalidRequest",
    "Job",
    "JobSubmit",
    "LeasedJob",
    "NotFound",
    "ProducerClient",
    "Retry",
    "SdkError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WorkerClient",
    "WorkerRunner",
]
