"""Backoff: exponential with jitter, capped; one formula for every retry loop.

Job retries draw full jitter (`backoff_ms`), so a burst of failures spreads over the whole
window. Reconnect and redelivery loops draw from the upper half (`backoff_s`), so successive
waits keep growing.
"""

from __future__ import annotations

import random


def backoff_ceiling_ms(attempt: int, base_ms: int, cap_ms: int) -> int:
    """The largest delay after failed attempt number `attempt` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    exp = min(attempt - 1, 62)
    return min(cap_ms, base_ms * (1 << exp))


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, jitter: float) -> int:
    """Full jitter: a delay drawn uniformly from [0, ceiling]; `jitter` is the draw in [0, 1)."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter is a draw in [0, 1)")
    return int(backoff_ceiling_ms(attempt, base_ms, cap_ms) * jitter)


def backoff_s(failures: int, base_s: float, cap_s: float, draw: float | None = None) -> float:
    """The wait after `failures` consecutive failures (1-based): `base_s` doubling up to
    `cap_s`, times a draw from [0.5, 1) (`draw` in [0, 1), random when omitted)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(failures, 1) - 1, 62))
    d = random.random() if draw is None else draw
    return ceiling * (0.5 + d / 2)


class Backoff:
    """Successive waits of `backoff_s` for a loop that retries: `next()` after each failure
    (or empty look), `reset()` after a success."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return backoff_s(self.failures, self.base_s, self.cap_s)

    def reset(self) -> None:
        self.failures = 0
