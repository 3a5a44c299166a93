"""The LISTEN connection and the registries of requests it wakes."""

from .listener import Notifier
from .waiters import ANY, JobWaiters, LeaseWaiter, LeaseWaiters

__all__ = ["ANY", "JobWaiters", "LeaseWaiter", "LeaseWaiters", "Notifier"]
