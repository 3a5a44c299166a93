"""Wire types of the HTTP API (docs/protocol.md), shared by the gateway and the SDK.

Requests refuse unknown fields so a typo is an error, not a silent default; responses
accept them so old clients keep working against newer servers.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .states import EventType, JobState

# Patterns end in `(?!\n)$`: a bare `$` also matches before a final newline ("q1\n").
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}(?!\n)$"
QUEUE_RE = re.compile(NAME_PATTERN)
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Priority = Annotated[int, Meta(ge=-1000, le=1000)]
MaxAttempts = Annotated[int, Meta(ge=1, le=100)]
# Fencing tokens are PostgreSQL bigints.
LeaseToken = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
JobIdStr = Annotated[str, Meta(pattern=r"^[0-9]{1,19}(?!\n)$")]
UtcTime = Annotated[datetime, Meta(tz=True)]
BackoffMs = Annotated[int, Meta(ge=0, le=7 * 86_400_000)]
MAX_BATCH = 1000
# The longest a long-poll (`wait_ms`) may wait.
MAX_WAIT_MS = 60_000


class _Request(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class _Response(Struct, kw_only=True, frozen=True):
    pass


# --- jobs ----------------------------------------------------------------------------------


class JobSubmit(_Request, frozen=True):
    payload: dict[str, Any] = {}
    queue: Name = "default"
    kind: Annotated[str, Meta(max_length=128)] = ""
    priority: Priority = 0
    run_at: UtcTime | None = None
    delay_ms: Annotated[int, Meta(ge=0, le=366 * 86_400_000)] | None = None
    max_attempts: MaxAttempts | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 86_400)] | None = None
    retry_base_ms: BackoffMs | None = None
    retry_cap_ms: BackoffMs | None = None


class JobBatchSubmit(_Request, frozen=True):
    jobs: Annotated[list[JobSubmit], Meta(min_length=1, max_length=MAX_BATCH)]


class Job(_Response, frozen=True):
    id: str
    tenant_id: str
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    last_error: str | None = None
    idempotency_key: str | None = None
    timeout_seconds: int | None = None
    cancel_requested: bool = False
    retry_base_ms: int | None = None
    retry_cap_ms: int | None = None
    traceparent: str | None = None  # W3C trace context of the submit, for the worker's spans


class LeasedJob(Job, frozen=True):
    lease_token: int = 0
    lease_expires_at: datetime | None = None


class JobList(_Response, frozen=True):
    jobs: list[Job]
    next: str | None = None


class JobBatch(_Response, frozen=True):
    jobs: list[Job]


# --- workers -------------------------------------------------------------------------------


class LeaseRequest(_Request, frozen=True):
    worker_id: Annotated[str, Meta(min_length=1, max_length=128)]
    queues: Annotated[list[Name], Meta(min_length=1, max_length=64)] = msgspec.field(
        default_factory=lambda: ["default"]
    )
    max_jobs: Annotated[int, Meta(ge=1, le=100)] = 1
    wait_ms: Annotated[int, Meta(ge=0, le=60_000)] = 30_000
    lease_seconds: Annotated[int, Meta(ge=1, le=3600)] = 30
    # Outcomes of earlier jobs, acknowledged before leasing (as POST /v1/workers/ack would), so
    # a busy worker makes one request per batch.
    complete: Annotated[list[AckComplete], Meta(max_length=MAX_BATCH)] = []
    fail: Annotated[list[AckFail], Meta(max_length=MAX_BATCH)] = []


class LeaseResponse(_Response, frozen=True, omit_defaults=True):
    jobs: list[LeasedJob]
    results: list[AckResult] = []  # one per acknowledgement the request carried; absent when none


class Heartbeat(_Request, frozen=True):
    lease_token: LeaseToken
    extend_seconds: Annotated[int, Meta(ge=1, le=3600)] | None = None


class HeartbeatResponse(_Response, frozen=True):
    lease_expires_at: datetime
    cancel_requested: bool


class Complete(_Request, frozen=True):
    lease_token: LeaseToken
    result: Any = None


class Fail(_Request, frozen=True):
    lease_token: LeaseToken
    error: Annotated[str, Meta(max_length=65_536)]
    retryable: bool = True
    retry_in_ms: Annotated[int, Meta(ge=0, le=366 * 86_400_000)] | None = None
    # Re-schedule after retry_in_ms without counting the attempt.
    snooze: bool = False


class AckComplete(_Request, frozen=True):
    id: JobIdStr
    lease_token: LeaseToken
    result: Any = None


class AckFail(_Request, frozen=True):
    id: JobIdStr
    lease_token: LeaseToken
    error: Annotated[str, Meta(max_length=65_536)]
    retryable: bool = True
    retry_in_ms: Annotated[int, Meta(ge=0, le=366 * 86_400_000)] | None = None
    snooze: bool = False


class Ack(_Request, frozen=True):
    complete: Annotated[list[AckComplete], Meta(max_length=MAX_BATCH)] = []
    fail: Annotated[list[AckFail], Meta(max_length=MAX_BATCH)] = []


class AckResult(_Response, frozen=True):
    id: str
    status: Literal[200, 404, 409]
    state: JobState | None = None


class AckResponse(_Response, frozen=True):
    results: list[AckResult]


class RetryPolicy(_Request, frozen=True):
    """Overrides of the deployment's retry defaults; unset fields fall through to the next level."""

    max_attempts: MaxAttempts | None = None
    retry_base_ms: BackoffMs | None = None
    retry_cap_ms: BackoffMs | None = None


class RetryPolicyOut(_Response, frozen=True):
    queue: str | None  # None: the tenant-wide policy
    max_attempts: int | None = None
    retry_base_ms: int | None = None
    retry_cap_ms: int | None = None


class QueueState(_Response, frozen=True):
    tenant_id: str
    queue: str
    paused: bool


class PausedQueues(_Response, frozen=True):
    queues: list[str]


class Replay(_Request, frozen=True):
    """Operator bulk replay: the named jobs, or a tenant's dead-letter queue (optionally one queue)."""

    tenant_id: Name
    ids: Annotated[list[JobIdStr], Meta(max_length=MAX_BATCH)] | None = None
    queue: Name | None = None
    limit: Annotated[int, Meta(ge=1, le=100_000)] = 1000


class Replayed(_Response, frozen=True):
    replayed: int


# --- events --------------------------------------------------------------------------------


class Event(_Response, frozen=True):
    id: str
    type: EventType
    job_id: str
    tenant_id: str
    queue: str
    at: datetime
    data: dict[str, Any] = {}


# --- operator ------------------------------------------------------------------------------


class TenantCreate(_Request, frozen=True):
    id: Name
    name: Annotated[str, Meta(max_length=256)] = ""
    weight: Annotated[int, Meta(ge=1, le=10_000)] = 1
    max_inflight: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None


class TenantPatch(_Request, frozen=True):
    name: Annotated[str, Meta(max_length=256)] | None = None
    weight: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    max_inflight: Annotated[int, Meta(ge=0, le=1000000)] | msgspec.UnsetType | None = msgspec.UNSET
    disabled: bool | None = None


class Tenant(_Response, frozen=True):
    id: str
    name: str
    weight: int
    max_inflight: int | None
    disabled: bool
    created_at: datetime


class TenantCreated(_Response, frozen=True):
    tenant: Tenant
    api_key: str


class TenantList(_Response, frozen=True):
    tenants: list[Tenant]


class ApiKey(_Response, frozen=True):
    api_key: str


class Reaped(_Response, frozen=True):
    requeued: int


class Problem(_Response, frozen=True):
    type: str
    title: str
    status: int
    detail: str
    field: str | None = None


# --- schedules -----------------------------------------------------------------------------

CronExpr = Annotated[str, Meta(min_length=1, max_length=256)]
TimeZoneName = Annotated[str, Meta(min_length=1, max_length=64)]
JobKind = Annotated[str, Meta(max_length=128)]


class ScheduleCreate(_Request, frozen=True):
    name: Name
    cron: CronExpr
    timezone: TimeZoneName = "UTC"
    queue: Name = "default"
    kind: JobKind = ""
    payload: dict[str, Any] = {}
    priority: Priority = 0
    max_attempts: MaxAttempts | None = None
    paused: bool = False


class SchedulePatch(_Request, frozen=True):
    name: Name | None = None
    cron: CronExpr | None = None
    timezone: TimeZoneName | None = None
    queue: Name | None = None
    kind: JobKind | None = None
    payload: dict[str, Any] | None = None
    priority: Priority | None = None
    # null clears it (the server's default applies); absent leaves it.
    max_attempts: MaxAttempts | msgspec.UnsetType | None = msgspec.UNSET
    paused: bool | None = None


class Schedule(_Response, frozen=True):
    name: str
    tenant_id: str
    cron: str
    timezone: str
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    max_attempts: int | None
    paused: bool
    next_fire_at: datetime
    last_fired_at: datetime | None
    created_at: datetime


class ScheduleList(_Response, frozen=True):
    schedules: list[Schedule]


# --- event stream, consumers, webhooks -----------------------------------------------------

# An event's position: "<xid>-<id>", opaque to clients (docs/events.md).
CURSOR_PATTERN = r"^[0-9]{1,20}-[0-9]{1,19}(?!\n)$"
CursorStr = Annotated[str, Meta(min_length=3, max_length=40, pattern=CURSOR_PATTERN)]


class EventPage(_Response, frozen=True):
    events: list[Event]
    next: str  # pass back as `after`: the last event's cursor, or the one given when there were none


class ConsumerCreate(_Request, frozen=True):
    name: Name
    # oldest: from the oldest retained event; latest: what commits from now on
    start: Literal["oldest", "latest"] = "oldest"


class Consumer(_Response, frozen=True):
    name: str
    cursor: str
    created_at: datetime
    updated_at: datetime


class ConsumerList(_Response, frozen=True):
    consumers: list[Consumer]


class ConsumerAck(_Request, frozen=True):
    cursor: CursorStr


WebhookUrl = Annotated[str, Meta(min_length=1, max_length=2048)]


class WebhookCreate(_Request, frozen=True):
    url: WebhookUrl
    event_types: Annotated[list[EventType], Meta(max_length=len(EventType))] = []  # empty: every type
    secret: Annotated[str, Meta(min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+(?!\n)$")] | None = None


class Webhook(_Response, frozen=True):
    id: str
    url: str
    event_types: list[EventType]
    state: Literal["active", "parked"]
    cursor: str  # the last event delivered (or passed over as not subscribed)
    attempts: int  # failed deliveries of the next event
    next_attempt_at: datetime
    delivered: int
    created_at: datetime
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    last_delivered_at: datetime | None = None
    secret: str | None = None  # only in the answer to a create that generated it


class WebhookList(_Response, frozen=True):
    webhooks: list[Webhook]


# --- retention -----------------------------------------------------------------------------

# The longest finite retention: a hundred years.
MAX_RETAIN_SECONDS = 100 * 365 * 86_400
RetainSeconds = Annotated[int, Meta(ge=0, le=MAX_RETAIN_SECONDS)]


class RetentionPolicy(_Request, frozen=True):
    """How long a scope keeps finished jobs, per final state, in seconds after they finished:
    0 keeps nothing, null keeps them for ever, an absent field inherits (a queue's from the
    tenant-wide policy, that from the deployment)."""

    succeeded_seconds: RetainSeconds | msgspec.UnsetType | None = msgspec.UNSET
    cancelled_seconds: RetainSeconds | msgspec.UnsetType | None = msgspec.UNSET
    dead_seconds: RetainSeconds | msgspec.UnsetType | None = msgspec.UNSET


class Retention(_Response, frozen=True):
    """The retention in force per final state, in seconds; null: kept for ever."""

    succeeded_seconds: int | None = None
    cancelled_seconds: int | None = None
    dead_seconds: int | None = None


class RetentionPolicyOut(_Response, frozen=True):
    queue: str | None  # None: the tenant-wide policy
    # What this scope sets, as in a PUT: an absent field inherits, null keeps for ever.
    succeeded_seconds: int | msgspec.UnsetType | None = msgspec.UNSET
    cancelled_seconds: int | msgspec.UnsetType | None = msgspec.UNSET
    dead_seconds: int | msgspec.UnsetType | None = msgspec.UNSET
    effective: Retention = Retention()


# --- operator: listings across tenants -----------------------------------------------------


class ApiKeyInfo(_Response, frozen=True):
    """A key as the operator lists it: never its secret."""

    key_id: str
    tenant_id: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None = None


class ApiKeyList(_Response, frozen=True):
    keys: list[ApiKeyInfo]


class AdminJob(Job, frozen=True):
    """A job as the operator sees it: with the worker that leased it last, and its lease while running."""

    worker_id: str | None = None
    lease_token: int | None = None
    lease_expires_at: datetime | None = None


class AdminJobList(_Response, frozen=True):
    jobs: list[AdminJob]
    next: str | None = None


class JobDetail(_Response, frozen=True):
    job: AdminJob
    events: list[Event]  # oldest first; those that event retention pruned are gone
    events_truncated: bool = False  # only the newest MAX_JOB_EVENTS are listed


MAX_JOB_EVENTS = 1000


class TenantDeleted(_Response, frozen=True):
    """What deleting a tenant removed, by kind."""

    tenant_id: str
    jobs: int
    running_jobs: int
    keys: int
    schedules: int
    webhooks: int
    consumers: int
    events: int


class WorkerInfo(_Response, frozen=True):
    """A worker id that holds leases now."""

    worker_id: str
    leases: int
    expired: int  # leases past their expiry that the reaper has not taken back yet
    tenants: list[str]
    queues: list[str]
    last_leased_at: datetime
    next_expiry_at: datetime


class WorkerList(_Response, frozen=True):
    workers: list[WorkerInfo]


class AdminScheduleList(_Response, frozen=True):
    schedules: list[Schedule]
    next: str | None = None


class TenantWebhook(Webhook, frozen=True):
    tenant_id: str = ""


class TenantWebhookList(_Response, frozen=True):
    webhooks: list[TenantWebhook]
    next: str | None = None


class QueueInfo(_Response, frozen=True):
    """A tenant's queue: paused, or holding open or dead jobs."""

    tenant_id: str
    queue: str
    paused: bool
    scheduled: int
    ready: int
    running: int
    dead: int
    oldest_ready_seconds: float | None = None


class QueueList(_Response, frozen=True):
    queues: list[QueueInfo]
