"""Domain errors. HTTP status codes live in the gateway's mapping table, not here."""

from __future__ import annotations


class OrchestratorError(Exception):
    """The orchestrator could not do what was asked."""

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.field = field
        super().__init__(self.detail)


class InvalidInput(OrchestratorError):
    """A field failed validation."""


class MalformedInput(OrchestratorError):
    """The request body is not valid JSON."""


class UnsupportedMediaType(OrchestratorError):
    """Request bodies are JSON: send Content-Type: application/json."""


class Unauthenticated(OrchestratorError):
    """The request's credentials are missing or invalid."""

    def __init__(self, detail: str | None = None, *, reason: str = "invalid") -> None:
        super().__init__(detail)
        self.reason = reason


class Forbidden(OrchestratorError):
    """This credential may not do that."""


class NotFound(OrchestratorError):
    """No such resource."""


class Conflict(OrchestratorError):
    """The resource's state does not allow this, or the lease token is stale."""


class StaleLease(Conflict):
    """The lease token is not the job's current one."""


class Gone(OrchestratorError):
    """Events after this cursor were pruned by retention."""


class Unavailable(OrchestratorError):
    """The database is unreachable; try again shortly."""
