"""The LISTEN connection heals itself, and what it missed while down is caught up."""

from __future__ import annotations

import asyncio
import time

import pytest

from notifier.listener import LISTEN_APPLICATION_NAME

from .support import Api, InProcessGateway, eventually, fetch, fetchval

pytestmark = pytest.mark.timeout(60)


async def test_lost_listen_connection_reconnects_and_catches_up(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("tenant-a")
    notifier = gateway.runtime.notifier
    lease = asyncio.create_task(api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 20_000}))

    async def parked() -> bool:
        return len(notifier.lease_waiters) == 1

    await eventually(parked, timeout=5)
    killed = await fetchval(
        database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        LISTEN_APPLICATION_NAME,
    )
    assert killed == 1
    # Submitted while nobody listens: this notification is lost.
    t0 = time.monotonic()
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}})).body
    r = await asyncio.wait_for(lease, 10)
    elapsed = time.monotonic() - t0
    assert [j["id"] for j in r.body["jobs"]] == [job["id"]]
    # Well before the 5 s safety poll: the reconnect's catch-up delivered it.
    assert elapsed < 3.0, elapsed

    async def ready() -> bool:
        return (await api.admin("GET", "/readyz")).status == 200

    await eventually(ready, timeout=10)
    metrics = (await api.admin("GET", "/metrics")).raw.decode()
    assert "orch_listen_reconnects_total" in metrics
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
