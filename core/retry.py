"""Retry backoff: exponential with full jitter, capped."""

from __future__ import annotations


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
