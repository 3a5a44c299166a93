"""The LISTEN connection heals itself, and what it missed while down is caught up."""

from __future__ import annotations

import asyncio

import pytest

from core import Settings
from notifier.listener import LISTEN_APPLICATION_NAME

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually, fetch, fetchval, metric_samples, metric_total

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(database_url: str) -> Settings:
    # A safety poll far beyond the waits below: whatever wakes a lease here is the notifier.
    return Settings(database_url=database_url, admin_token=ADMIN_TOKEN, safety_poll_seconds=120)


async def _reconnects(api: Api) -> float:
    return metric_total(
        metric_samples((await api.admin("GET", "/metrics")).raw.decode()), "orch_listen_reconnects_total"
    )


async def test_lost_listen_connection_reconnects_and_catches_up(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("tenant-a")
    notifier = gateway.runtime.notifier
    lease = asyncio.create_task(api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 20_000}))

    async def parked() -> bool:
        return len(notifier.lease_waiters) == 1

    await eventually(parked, timeout=5)
    reconnects_before = await _reconnects(api)
    killed = await fetchval(
        database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        LISTEN_APPLICATION_NAME,
    )
    assert killed == 1
    # Submitted while nobody listens: this notification is lost.
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    # Long before the safety poll and the lease's own deadline: the reconnect's catch-up delivered it.
    r = await asyncio.wait_for(lease, 10)
    assert [j["id"] for j in r.body["jobs"]] == [job["id"]]

    async def ready() -> bool:
        return (await api.admin("GET", "/readyz")).status == 200

    await eventually(ready, timeout=10)
    assert await _reconnects(api) == reconnects_before + 1
    rows = await fetch(
        database_url,
        "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        LISTEN_APPLICATION_NAME,
    )
    assert len(rows) == 1


async def test_readyz_reports_listen_health(api: Api, gateway: InProcessGateway) -> None:
    r = await api.admin("GET", "/readyz")
    assert r.status == 200 and r.body == {"status": "ok", "database": True, "listen": True}
    await gateway.runtime.notifier.stop()
    r = await api.admin("GET", "/readyz")
    assert r.status == 503 and r.body["listen"] is False
    assert (await api.admin("GET", "/healthz")).status == 200
