"""Rows to wire types."""

from __future__ import annotations

from typing import Any

import asyncpg

from core import JobState
from core.wire import Job, LeasedJob, Tenant


def _job_fields(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "tenant_id": r["tenant_id"],
        "queue": r["queue"],
        "kind": r["kind"],
        "payload": r["payload"],
        "priority": r["priority"],
        "state": JobState(r["state"]),
        "attempts": r["attempts"],
        "max_attempts": r["max_attempts"],
        "run_at": r["run_at"],
        "created_at": r["created_at"],
        "started_at": r["started_at"],
        "finished_at": r["finished_at"],
        "result": r["result"],
        "last_error": r["last_error"],
        "idempotency_key": r["idempotency_key"],
        "timeout_seconds": r["timeout_seconds"],
        "cancel_requested": r["cancel_requested"],
        "retry_base_ms": r["retry_base_ms"],
        "retry_cap_ms": r["retry_cap_ms"],
        "traceparent": r["traceparent"],
    }


def job_from_row(r: asyncpg.Record) -> Job:
    return Job(**_job_fields(r))


def leased_job_from_row(r: asyncpg.Record) -> LeasedJob:
    return LeasedJob(**_job_fields(r), lease_token=r["lease_token"], lease_expires_at=r["lease_expires_at"])


def tenant_from_row(r: asyncpg.Record) -> Tenant:
    return Tenant(
        id=r["id"],
        name=r["name"],
        weight=r["weight"],
        max_inflight=r["max_inflight"],
        disabled=r["disabled"],
        created_at=r["created_at"],
    )
