"""Metrics match what happened; several processes behind one port count once; the shipped
dashboards and alerts query only metrics that exist; logs are JSON with request and tenant."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.services.stats import refresh_stats

from .conftest import ADMIN_TOKEN
from .support import (
    Api,
    GatewayProcess,
    InProcessGateway,
    eventually,
    fetch,
    metric_samples,
    metric_total,
    running,
    snapshot_totals,
    submit_until_every_process_served,
    worker_pids,
)

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).parent.parent / "deploy"


_samples = metric_samples
_total = metric_total


async def _scrape(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = await api.admin("GET", "/metrics")
    assert r.status == 200
    return _samples(r.raw.decode())


async def _lease_one(api: Api, key: str) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 5000})
    (job,) = r.body["jobs"]
    return dict(job)


async def test_counters_histograms_and_gauges_match_a_known_workload(
    api: Api, gateway: InProcessGateway, database_url: str
) -> None:
    key = await api.tenant("tenant-a", max_inflight=50)
    n_ok, n_retry, n_dead = 6, 3, 2
    await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"k": "ok"}} for _ in range(n_ok)]})
    await api.signed(
        key,
        "POST",
        "/v1/jobs/batch",
        {"jobs": [{"payload": {"k": "retry"}, "max_attempts": 2} for _ in range(n_retry)]},
    )
    await api.signed(
        key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"k": "dead"}, "max_attempts": 1} for _ in range(n_dead)]}
    )
    cancelled = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"k": "cancel"}, "delay_ms": 60_000})).body
    assert (await api.signed(key, "POST", f"/v1/jobs/{cancelled['id']}/cancel")).status == 200
    waiting = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"k": "later"}, "delay_ms": 600_000})).body

    failed_once: set[str] = set()
    done = 0
    while done < n_ok + n_retry + n_dead:
        job = await _lease_one(api, key)
        kind = job["payload"]["k"]
        token = {"lease_token": job["lease_token"]}
        if kind == "ok" or (kind == "retry" and job["id"] in failed_once):
            await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", token)
            done += 1
        else:
            r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {**token, "error": "x", "retry_in_ms": 0})
            failed_once.add(job["id"])
            done += r.body["state"] == "dead"
    # a stale token and a bad signature
    await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": 1})
    await api.signed(key.split(".")[0] + ".wrong", "GET", "/v1/jobs")

    await refresh_stats(gateway.runtime)
    m = await _scrape(api)
    t = {"tenant": "tenant-a"}
    assert _total(m, "orch_jobs_submitted_total", **t) == n_ok + n_retry + n_dead + 2
    assert _total(m, "orch_jobs_leased_total", **t) == n_ok + 2 * n_retry + n_dead
    assert _total(m, "orch_jobs_succeeded_total", **t) == n_ok + n_retry
    assert _total(m, "orch_jobs_failed_total", **t) == n_retry
    assert _total(m, "orch_jobs_dead_total", **t) == n_dead
    assert _total(m, "orch_jobs_cancelled_total", **t) == 1
    assert _total(m, "orch_fencing_rejections_total") == 1
    assert _total(m, "orch_auth_failures_total", reason="bad_signature") == 1
    # one queue wait per lease, one run time per finished attempt, one end-to-end per ended job
    assert _total(m, "orch_queue_wait_seconds_count", **t) == n_ok + 2 * n_retry + n_dead
    assert _total(m, "orch_run_time_seconds_count", **t) == n_ok + 2 * n_retry + n_dead
    assert _total(m, "orch_end_to_end_seconds_count", **t) == n_ok + n_retry + n_dead
    assert _total(m, "orch_lease_requests_total", outcome="jobs") == n_ok + 2 * n_retry + n_dead
    assert _total(m, "orch_http_request_duration_seconds_count", route="/v1/jobs/batch", status="201") == 3
    # gauges: what the database holds now
    rows = await fetch(
        database_url,
        "SELECT state::text AS state, count(*) AS n FROM jobs WHERE state IN ('scheduled', 'ready', 'running', 'dead') GROUP BY 1",
    )
    for row in rows:
        assert _total(m, "orch_db_jobs", state=row["state"], **t) == row["n"]
    assert _total(m, "orch_db_jobs", state="dead", **t) == n_dead
    assert _total(m, "orch_db_jobs", state="scheduled", **t) == 1 and waiting["state"] == "scheduled"
    assert _total(m, "orch_db_max_inflight", **t) == 50
    assert _total(m, "orch_db_running", **t) == 0
    assert _total(m, "orch_listen_up") == 1


async def test_several_processes_behind_one_port_count_once(database_url: str, tmp_path: Path) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, env={**os.environ, "ORCH_METRICS_DIR": str(tmp_path)})
    try:
        await gw.wait_ready()
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await api.tenant("tenant-a")
            submitted, per_process = await submit_until_every_process_served(gw, key, tmp_path)
            # the snapshots are those of the two gateway processes, and each took some of the submits
            assert set(per_process) == worker_pids(gw), (per_process, worker_pids(gw))

            async def all_counted() -> bool:
                return _total(await _scrape(api), "orch_jobs_submitted_total") == submitted

            # other processes' figures reach a scrape within their snapshot interval (1 s)
            await eventually(all_counted, timeout=10)

            async def snapshots_caught_up() -> dict[int, float] | None:
                counts = snapshot_totals(tmp_path, "orch_jobs_submitted_total")
                return counts if sum(counts.values()) == submitted else None

            per_process = await eventually(snapshots_caught_up, timeout=10)
            assert len(per_process) == 2 and all(per_process.values()), per_process
            # every scrape, whichever process answers it, counts each submit once
            for _ in range(6):
                assert _total(await _scrape(api), "orch_jobs_submitted_total") == submitted, per_process
            print(f"{submitted} submits counted per process:", per_process)
        finally:
            await api.close()
    finally:
        gw.stop()


def _referenced_metrics() -> set[str]:
    names: set[str] = set()
    dash = json.loads((DEPLOY / "grafana/dashboards/orchestrator.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\borch_[a-z_]+", target["expr"]))
    names |= set(re.findall(r"\borch_[a-z_]+", (DEPLOY / "prometheus/alerts.yml").read_text()))
    return names


def test_dashboard_is_valid_for_grafana_provisioning() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/orchestrator.json").read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    datasource_uid = re.search(
        r"uid:\s*(\S+)", (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource_uid is not None
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["datasource"]["uid"] == datasource_uid.group(1)
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
    provider = (DEPLOY / "grafana/provisioning/dashboards/orchestrator.yml").read_text()
    compose = (DEPLOY / "docker-compose.yml").read_text()
    path = re.search(r"path:\s*(\S+)", provider)
    assert path is not None and f"./grafana/dashboards:{path.group(1)}" in compose


async def test_traceparent_travels_from_submit_to_the_worker(api: Api, settings: Any) -> None:
    key = await api.tenant("tenant-a")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    tp = f"00-{trace_id}-00f067aa0ba902b7-01"
    job = (await api.signed_with_headers(key, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": tp})).body
    assert job["traceparent"] == tp  # tracing off: stored as given
    leased = await _lease_one(api, key)
    assert leased["traceparent"] == tp
    bad = (await api.signed_with_headers(key, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": "garbage"})).body
    assert bad["traceparent"] is None


async def test_with_tracing_on_the_gateway_span_continues_the_trace(settings: Any) -> None:
    import msgspec

    traced = msgspec.structs.replace(settings, traces="console")
    async with running(InProcessGateway(traced)) as gw:
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await api.tenant("tenant-a")
            trace_id = "0af7651916cd43dd8448eb211c80319c"
            tp = f"00-{trace_id}-b7ad6b7169203331-01"
            job = (await api.signed_with_headers(key, "POST", "/v1/jobs", {"payload": {}}, {"traceparent": tp})).body
            _, stored_trace, stored_parent, _ = job["traceparent"].split("-")
            assert stored_trace == trace_id and stored_parent != "b7ad6b7169203331"
        finally:
            await api.close()
