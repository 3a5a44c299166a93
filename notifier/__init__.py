"""The LISTEN connection and the registries of requests it wakes."""

from .listener import Notifier
from .waiters import ANY, EventWaiters, JobWaiters, LeaseWaiter, LeaseWaiters, withheld_recheck

__all__ = ["ANY", "EventWaiters", "JobWaiters", "LeaseWaiter", "LeaseWaiters", "Notifier", "withheld_recheck"]
