"""How long the SDK waits before retrying after a transient error."""

from __future__ import annotations

from core.retry import backoff_s

from ._errors import Unavailable

BASE_S = 0.1
CAP_S = 5.0


def retry_delay_s(failures: int, exc: BaseException | None = None) -> float:
    """The core backoff from 0.1 s up to 5 s, and never sooner than the server's Retry-After
    (itself capped at 5 s)."""
    delay = backoff_s(failures, BASE_S, CAP_S)
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        delay = max(delay, min(exc.retry_after, CAP_S))
    return delay
