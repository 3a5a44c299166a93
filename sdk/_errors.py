"""Exceptions the SDK raises, and the ones handlers raise to steer their job."""

from __future__ import annotations

from core.wire import Job


class SdkError(Exception):
    """The orchestrator client could not do what was asked."""


class TransportError(SdkError):
    """The gateway could not be reached, or the connection broke or timed out."""


class ApiError(SdkError):
    """The gateway answered with an error (an application/problem+json body)."""

    def __init__(self, status: int, detail: str, *, field: str | None = None, title: str = "", type: str = "") -> None:
        self.status = status
        self.detail = detail
        self.field = field
        self.title = title
        self.type = type
        super().__init__(f"{status} {title}: {detail}" if title else f"{status}: {detail}")


class InvalidRequest(ApiError):
    """400 malformed body, 413 body too large, or 422 a field that fails validation."""


class Unauthorized(ApiError):
    """401: the key is unknown, revoked, or the signature does not match."""


class Forbidden(ApiError):
    """403: the key is valid but may not do this."""


class NotFound(ApiError):
    """404: no such resource (or one of another tenant)."""


class Conflict(ApiError):
    """409: a stale lease token, or a transition the job's state does not allow."""


class Gone(ApiError):
    """410: events after this cursor were pruned by retention; start again without a cursor
    (or, for a consumer, delete and create it again)."""


class Unavailable(ApiError):
    """503 (database unreachable) or 429 (rate limited): try again after `retry_after` seconds."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        title: str = "",
        type: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, detail, field=field, title=title, type=type)
        self.retry_after = retry_after


class WaitTimeout(SdkError):
    """The job did not finish in time; `job` is the job as it last stood."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        self.job = job
        self.timeout_s = timeout_s
        super().__init__(f"job {job.id} is still {job.state} after {timeout_s:g} s")


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: the gateway is unreachable, overloaded, or failed on its side."""
    return isinstance(exc, TransportError | Unavailable) or (isinstance(exc, ApiError) and exc.status >= 500)


class Retry(Exception):
    """Raised by a handler: fail this attempt as retryable, optionally after `delay_ms`."""

    def __init__(self, delay_ms: int | None = None, reason: str = "the handler asked for a retry") -> None:
        self.delay_ms = delay_ms
        self.reason = reason
        super().__init__(reason)


class Cancel(Exception):
    """Raised by a handler: fail this job for good (it becomes `dead`, never retried)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Snooze(Exception):
    """Raised by a handler: run this job again after `delay_ms`, without counting the attempt."""

    def __init__(self, delay_ms: int, reason: str = "") -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        self.delay_ms = delay_ms
        self.reason = reason or f"snoozed for {delay_ms} ms"
        super().__init__(self.reason)
