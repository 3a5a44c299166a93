"""The domain, pure: states, wire types, signing, retry policy, settings and errors."""

from . import cron, signing, wire
from .errors import (
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    MalformedInput,
    NotFound,
    OrchestratorError,
    StaleLease,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from .numbers import parse_uint
from .retry import Backoff, backoff_ceiling_ms, backoff_ms, backoff_s
from .settings import Settings, load_settings
from .states import TERMINAL, EventType, JobState, is_terminal

__all__ = [
    "TERMINAL",
    "Backoff",
    "Conflict",
    "EventType",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "JobState",
    "MalformedInput",
    "NotFound",
    "OrchestratorError",
    "Settings",
    "StaleLease",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "backoff_ceiling_ms",
    "backoff_ms",
    "backoff_s",
    "cron",
    "is_terminal",
    "load_settings",
    "parse_uint",
    "signing",
    "wire",
]
