"""How long to wait before retrying after a transient error."""

from __future__ import annotations

import random

from ._errors import Unavailable

BASE_S = 0.1
CAP_S = 5.0


def backoff_s(failures: int, exc: BaseException | None = None) -> float:
    """Exponential with jitter: about 0.1 s after the first failure, doubling up to 5 s, and
    never sooner than the server's Retry-After (itself capped at 5 s)."""
    ceiling = min(CAP_S, BASE_S * 2.0 ** min(max(failures, 1) - 1, 16))
    delay = ceiling * random.uniform(0.5, 1.0)
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        delay = max(delay, min(exc.retry_after, CAP_S))
    return delay
