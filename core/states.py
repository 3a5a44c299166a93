"""Job states and event types.

The state machine itself is the database's: an enum type, CHECK constraints, and every UPDATE
naming the state it expects (tests/test_transitions.py drives every transition through HTTP).
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    SCHEDULED = "scheduled"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


class EventType(enum.StrEnum):
    CREATED = "job.created"
    STARTED = "job.started"
    SUCCEEDED = "job.succeeded"
    RETRY_SCHEDULED = "job.retry_scheduled"
    DEAD = "job.dead"
    CANCELLED = "job.cancelled"
    REPLAYED = "job.replayed"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL
