"""The LISTEN connection and the registries of requests it wakes."""

from .listener import Notifier
from .waiters import ANY, EventWaiters, JobWaiters, LeaseWaiter, LeaseWaiters

__all__ = ["ANY", "EventWaiters", "JobWaiters", "LeaseWaiter", "LeaseWaiters", "Notifier"]
