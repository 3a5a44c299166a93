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
)
from .retry import backoff_ceiling_ms, backoff_ms
from .settings import Settings, load_settings
from .states import TERMINAL, EventType, JobState, can_transition, is_terminal, transition_event

__all__ = [
    "TERMINAL",
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
    "backoff_ceiling_ms",
    "backoff_ms",
    "can_transition",
    "cron",
    "is_terminal",
    "load_settings",
    "signing",
    "transition_event",
    "wire",
]
