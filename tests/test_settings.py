"""The ORCH_ settings a deployment sets, each shown working against a real server and database:
the body limit, the tenant label and refresh pace of the metrics, the log format, and refusing
values that are not numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import msgspec
import pytest

from core import Settings, load_settings
from gateway.services.stats import refresh_stats

from .conftest import ADMIN_TOKEN
from .support import (
    Api,
    GatewayProcess,
    InProcessGateway,
    Samples,
    eventually,
    fetch,
    fetchval,
    free_port,
    metric_samples,
    metric_total,
    running,
)

pytestmark = pytest.mark.timeout(60)

# The gauges that are about tenants keep their tenant label whatever the setting.
PER_TENANT = {
    "orch_db_running",
    "orch_db_max_inflight",
    "orch_db_tenant_weight",
    "orch_db_consumer_lag_events",
    "orch_db_webhook_backlog_events",
}


def _settings(database_url: str, **env: str) -> Settings:
    """Settings built the way `serve` builds them: from an environment."""
    return load_settings({"DATABASE_URL": database_url, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN, **env})


@pytest.fixture
async def client() -> AsyncIterator[list[Api]]:
    """Clients to close at the end of the test."""
    made: list[Api] = []
    try:
        yield made
    finally:
        for api in made:
            await api.close()


async def _scrape(api: Api) -> Samples:
    r = await api.admin("GET", "/metrics")
    assert r.status == 200
    return metric_samples(r.raw.decode())


def _body_of_size(size: int) -> bytes:
    """A submit whose JSON body is exactly `size` bytes long."""
    empty = msgspec.json.encode({"payload": {"blob": ""}})
    body = msgspec.json.encode({"payload": {"blob": "x" * (size - len(empty))}})
    assert len(body) == size
    return body


# 4 KiB is sent with a Content-Length; 70,000 bytes streamed by the client in chunks.
@pytest.mark.parametrize("limit", [4096, 70_000])
async def test_max_body_bytes_refuses_just_over_the_limit(database_url: str, client: list[Api], limit: int) -> None:
    async with running(InProcessGateway(_settings(database_url, ORCH_MAX_BODY_BYTES=str(limit)))) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        client.append(api)
        key = await api.tenant("tenant-a")
        r = await api.signed(key, "POST", "/v1/jobs", body=_body_of_size(limit + 1))
        assert r.status == 413, r.body
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.body["status"] == 413 and r.body["detail"], r.body
        assert await fetchval(database_url, "SELECT count(*) FROM jobs") == 0
        r = await api.signed(key, "POST", "/v1/jobs", body=_body_of_size(limit))
        assert r.status == 201, r.body
        assert await fetchval(database_url, "SELECT count(*) FROM jobs") == 1


async def test_without_the_tenant_label_job_metrics_add_up_over_tenants(database_url: str, client: list[Api]) -> None:
    async with running(InProcessGateway(_settings(database_url, ORCH_METRICS_TENANT_LABEL="off"))) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        client.append(api)
        keys = [await api.tenant(t, max_inflight=10) for t in ("a", "b", "c")]
        submitted = 0
        for i, key in enumerate(keys):
            for queue in ("default", "emails"):
                jobs = [{"payload": {}, "max_attempts": 1} for _ in range(i + 1)]
                jobs.append({"payload": {}, "delay_ms": 600_000})
                r = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{**j, "queue": queue} for j in jobs]})
                assert r.status == 201, r.body
                submitted += len(jobs)
            # one running and, from the second tenant on, one dead job in each tenant's default queue
            leased = (await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 1})).body
            (job,) = leased["jobs"]
            if i:
                fail = {"lease_token": job["lease_token"], "error": "x"}
                r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", fail)
                assert r.body["state"] == "dead", r.body
                await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 1})
        await refresh_stats(gw.runtime)
        m = await _scrape(api)

        tenant_labelled = sorted({n for (n, labels) in m if n not in PER_TENANT and dict(labels).get("tenant")})
        assert not tenant_labelled, tenant_labelled
        assert metric_total(m, "orch_db_running", tenant="b") == 1  # the per-tenant gauges keep it
        assert metric_total(m, "orch_jobs_submitted_total") == submitted
        assert metric_total(m, "orch_jobs_dead_total", queue="default") == 2
        rows = await fetch(
            database_url,
            "SELECT queue, state::text AS state, count(*) AS n FROM jobs"
            " WHERE state IN ('scheduled', 'ready', 'running', 'dead') GROUP BY 1, 2",
        )
        want = {(r["queue"], r["state"]): r["n"] for r in rows}
        got = {
            (dict(labels)["queue"], dict(labels)["state"]): v
            for (n, labels), v in m.items()
            if n == "orch_db_jobs" and v
        }
        assert got == want
        # figures that several tenants make up together
        assert (want[("default", "running")], want[("emails", "ready")], want[("emails", "scheduled")]) == (3, 6, 3)


async def test_stats_interval_sets_how_soon_the_gauges_follow_the_database(
    database_url: str, client: list[Api]
) -> None:
    # The default refreshes every 10 s; each change below must show within 3 s.
    async with running(InProcessGateway(_settings(database_url, ORCH_STATS_INTERVAL_SECONDS="0.2"))) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        client.append(api)
        key = await api.tenant("tenant-a")

        async def gauge(state: str, value: float) -> bool:
            return metric_total(await _scrape(api), "orch_db_jobs", state=state) == value

        await api.signed(key, "POST", "/v1/jobs", {"payload": {}})
        await eventually(lambda: gauge("ready", 1), timeout=3)
        await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w"})
        await eventually(lambda: gauge("running", 1), timeout=3)
        assert metric_total(await _scrape(api), "orch_db_jobs", state="ready") == 0


async def test_log_format_text_writes_plain_lines(database_url: str) -> None:
    env = {**os.environ, "ORCH_LOG_FORMAT": "text"}
    gw = GatewayProcess(database_url, ADMIN_TOKEN, env=env, extra_args=["--log-level", "info"])
    try:
        await gw.wait_ready()
    finally:
        output = gw.stop()
    lines = [line for line in output.splitlines() if line.strip() and "listening on" not in line]
    assert lines, output  # the server's own log lines at level info
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        assert not isinstance(value, dict), f"a JSON log line: {line}"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ORCH_POOL_MAX", "lots", "ORCH_POOL_MAX must be an integer, got 'lots'"),
        ("ORCH_MAX_BODY_BYTES", "1.5", "ORCH_MAX_BODY_BYTES must be an integer, got '1.5'"),
        ("ORCH_SAFETY_POLL_SECONDS", "soon", "ORCH_SAFETY_POLL_SECONDS must be a number, got 'soon'"),
    ],
)
def test_a_value_that_is_not_a_number_stops_serve_naming_the_variable(
    database_url: str, variable: str, value: str, message: str
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN, variable: value}
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "listening" not in out.stdout, out.stdout
