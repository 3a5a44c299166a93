"""Background services are supervised: a crash is logged, counted and followed by a restart;
one that keeps crashing makes /readyz fail; a crashed service never blocks shutdown."""

from __future__ import annotations

import asyncio
import re

import pytest

from gateway import runtime
from gateway.runtime import FAILING_AFTER_CRASHES, Service

from .support import Api, InProcessGateway, eventually

pytestmark = pytest.mark.timeout(60)


async def test_a_crashing_service_is_restarted_counted_and_reported(
    api: Api, gateway: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    runs = 0

    async def crashes(_rt: object) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("boom")

    rt = gateway.runtime
    assert (await api.admin("GET", "/readyz")).status == 200
    rt.supervise(Service("crasher", crashes))

    async def failing() -> bool:
        r = await api.admin("GET", "/readyz")
        return r.status == 503 and r.body.get("failing_services") == ["crasher"]

    await eventually(failing, timeout=30)
    assert runs >= FAILING_AFTER_CRASHES
    r = await api.admin("GET", "/readyz")
    assert r.headers["Retry-After"] == "1" and r.body["database"] is True
    text = (await api.admin("GET", "/metrics")).raw.decode()
    restarts = [
        line
        for line in text.splitlines()
        if line.startswith("orch_service_restarts_total{")
        and 'service="crasher"' in line
        and 'error="RuntimeError"' in line
    ]
    assert restarts and float(restarts[0].split()[-1]) >= FAILING_AFTER_CRASHES
    assert re.search(r"^orch_services_failing\{[^}]*\} 1\.0$", text, re.MULTILINE)
    assert any("background service crasher crashed" in rec.getMessage() and rec.exc_info for rec in caplog.records)


async def test_a_service_that_recovers_stops_counting_as_failing(
    api: Api, gateway: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "HEALTHY_RUN_SECONDS", 0.5)
    runs = 0

    async def flaky(_rt: object) -> None:
        nonlocal runs
        runs += 1
        if runs <= FAILING_AFTER_CRASHES:
            raise RuntimeError("not yet")
        await asyncio.Event().wait()

    gateway.runtime.supervise(Service("flaky", flaky))

    async def reported(expected: list[str]) -> bool:
        r = await api.admin("GET", "/readyz")
        return bool(r.body.get("failing_services", []) == expected)

    await eventually(lambda: reported(["flaky"]), timeout=30, every=0.01)
    await eventually(lambda: reported([]), timeout=10)
    assert runs == FAILING_AFTER_CRASHES + 1
    assert (await api.admin("GET", "/readyz")).status == 200
