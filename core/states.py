"""Job states, event types and the legal transitions between states.

The database enforces the same machine: an enum type, CHECK constraints, and every UPDATE
naming the state it expects.
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

S = JobState
# (from, to) -> the event that change writes; None where the change is implied and writes none.
TRANSITIONS: dict[tuple[JobState, JobState], EventType | None] = {
    (S.SCHEDULED, S.READY): None,  # run_at reached
    (S.SCHEDULED, S.CANCELLED): EventType.CANCELLED,
    (S.READY, S.RUNNING): EventType.STARTED,
    (S.READY, S.CANCELLED): EventType.CANCELLED,
    (S.RUNNING, S.SUCCEEDED): EventType.SUCCEEDED,
    (S.RUNNING, S.SCHEDULED): EventType.RETRY_SCHEDULED,  # failed, or lease expired
    (S.RUNNING, S.READY): EventType.RETRY_SCHEDULED,  # lease expired, retry due at once
    (S.RUNNING, S.DEAD): EventType.DEAD,
    (S.RUNNING, S.CANCELLED): EventType.CANCELLED,  # cancel requested, then failed or expired
    (S.DEAD, S.READY): EventType.REPLAYED,
    (S.CANCELLED, S.READY): EventType.REPLAYED,
}
del S


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL


def transition_event(old: JobState, new: JobState) -> EventType | None:
    """The event a legal change writes; raises ValueError for an illegal change."""
    try:
        return TRANSITIONS[(old, new)]
    except KeyError:
        raise ValueError(f"illegal job transition {old} -> {new}") from None


def can_transition(old: JobState, new: JobState) -> bool:
    return (old, new) in TRANSITIONS
