"""The shipped alert rules and dashboard, checked by a real Prometheus scraping a real gateway of
two processes under load: every rule loads and evaluates, every panel query and alert expression
parses and returns data, and every exported metric is on the dashboard and in the docs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, eventually, free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus/alerts.yml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="the prometheus and promtool binaries are not installed (Debian: apt-get install prometheus; .ci/run does)",
)

# Alerts whose expression is empty on a healthy gateway (not firing), with why; each one's
# metrics are still checked to have data.
QUIET_ALERTS = {
    "OrchestratorBacklogAging": "no ready job waits 5 minutes in a test of seconds",
    "OrchestratorStatsStale": "the database answers: the figures are refreshed every second",
    "OrchestratorReaperBusy": "only one lease expires",
    "OrchestratorListenDown": "both processes hold their LISTEN connection",
    "OrchestratorServerErrors": "no request fails with 5xx",
    "OrchestratorServiceFailing": "no background service crashes",
    "OrchestratorFencingRejections": "one stale token, below the rate",
}
# Alerts the load makes true, with why.
FIRING_ALERTS = {"OrchestratorDeadLetterGrowing": "a quarter of the jobs fail, and those with one attempt go dead"}
# Documented families a short load does not create, with why (their panels answer `or vector(0)`).
NOT_YET_EXPORTED = {"orch_schedule_fires_total": "cron fires at most once a minute; the load lasts seconds"}
# Dashboard queries that may be empty, by panel title and legend, with why.
QUIET_PANEL_QUERIES: dict[tuple[str, str], str] = {}


class Prometheus:
    """A real Prometheus on a free loopback port with a scratch storage folder, scraping one
    target every second and evaluating the shipped alert rules."""

    def __init__(self, target: str, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "orchestrator", "static_configs": [{"targets": [target]}]}],
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = tempfile.TemporaryFile()
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.session = aiohttp.ClientSession()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def wait_scraping(self) -> None:
        async def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(aiohttp.ClientError):
                result = await self.query("up")
                return bool(result) and result[0]["value"][1] == "1"
            return False

        await eventually(up, timeout=30, every=0.2)

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as r:
            body = await r.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def stop(self) -> None:
        await self.session.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextlib.asynccontextmanager
async def prometheus(target: str, folder: Path) -> AsyncIterator[Prometheus]:
    prom = Prometheus(target, folder)
    try:
        await prom.wait_scraping()
        yield prom
    finally:
        await prom.stop()


def alert_rules() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def panel_queries() -> dict[tuple[str, str], str]:
    dash = json.loads((DEPLOY / "grafana/dashboards/orchestrator.json").read_text())
    return {(p["title"], t["legendFormat"]): t["expr"] for p in dash["panels"] for t in p["targets"]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\borch_[a-z_]+", expr))


@needs_prometheus
def test_alert_rules_pass_promtool() -> None:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    async def hook(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def _load(api: Api, hook_url: str, seconds: float) -> None:
    """Jobs of two tenants through every transition the dashboard shows, for `seconds`."""
    a = await api.tenant("tenant-a", weight=2, max_inflight=20)
    b = await api.tenant("tenant-b")
    worker = await api.worker_key()
    assert (await api.signed(a, "POST", "/v1/consumers", {"name": "audit"})).status == 201
    assert (await api.signed(a, "POST", "/v1/webhooks", {"url": hook_url})).status == 201
    assert (await api.signed(b, "POST", "/v1/jobs", {"queue": "idle", "payload": {}})).status == 201
    # one lease left to expire, for the reaper
    assert (await api.signed(b, "POST", "/v1/jobs", {"queue": "expire", "payload": {}})).status == 201
    r = await api.signed(
        worker, "POST", "/v1/workers/lease", {"worker_id": "gone", "queues": ["expire"], "lease_seconds": 1}
    )
    assert len(r.body["jobs"]) == 1, r.body
    await api.signed(a.split(".")[0] + ".wrong", "GET", "/v1/jobs")

    async def produce() -> None:
        n = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for key in (a, b):
                jobs = [{"payload": {"n": n}, "max_attempts": 1 + n % 3} for _ in range(5)]
                assert (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": jobs})).status == 201
            delayed = await api.signed(a, "POST", "/v1/jobs", {"payload": {}, "delay_ms": 300})
            later = await api.signed(a, "POST", "/v1/jobs", {"payload": {}, "delay_ms": 60_000})
            assert (await api.signed(a, "POST", f"/v1/jobs/{later.body['id']}/cancel")).status == 200
            assert delayed.status == 201
            await api.signed(a, "GET", "/v1/events?wait_ms=10")
            await api.signed(a, "GET", "/v1/consumers/audit/events")
            n += 1
            await asyncio.sleep(0.2)

    async def work() -> None:
        keys = {"tenant-a": a, "tenant-b": b}
        dead: list[tuple[str, str]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds + 2
        while loop.time() < end:
            r = await api.signed(
                worker, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 10, "wait_ms": 200}
            )
            for i, job in enumerate(r.body["jobs"]):
                token = {"lease_token": job["lease_token"]}
                if i % 4 == 0:
                    r2 = await api.signed(
                        worker, "POST", f"/v1/jobs/{job['id']}/fail", {**token, "error": "x", "retry_in_ms": 0}
                    )
                    if r2.body["state"] == "dead":
                        dead.append((job["tenant_id"], job["id"]))
                else:
                    await api.signed(worker, "POST", f"/v1/jobs/{job['id']}/complete", token)
            if len(dead) > 1:  # some stay dead, for the dead-letter panel
                tenant_id, job_id = dead.pop()
                assert (await api.signed(keys[tenant_id], "POST", f"/v1/jobs/{job_id}/retry")).status == 200

    await asyncio.gather(produce(), work())


def _documented_metrics() -> set[str]:
    """The names in the first column of the metrics table of docs/observability.md."""
    names: set[str] = set()
    for line in (ROOT / "docs/observability.md").read_text().splitlines():
        if line.startswith("| `orch_"):
            names |= set(re.findall(r"`(orch_[a-z_]+)`", line.split("|")[1]))
    return names


@needs_prometheus
async def test_every_panel_and_alert_query_returns_data(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ORCH_METRICS_DIR": str(tmp_path / "metrics"),
        "ORCH_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "ORCH_STATS_INTERVAL_SECONDS": "1",
        "ORCH_REAP_INTERVAL_SECONDS": "0.5",
    }
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, env=env)
    try:
        await gw.wait_ready()
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            async with webhook_receiver() as hook, prometheus(f"127.0.0.1:{gw.port}", tmp_path / "prom") as prom:
                await _load(api, hook, seconds=8)
                await _check_queries(prom)
                await _check_rules(prom)
                scrape = (await api.admin("GET", "/metrics")).raw.decode()
        finally:
            await api.close()
    finally:
        gw.stop()
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(scrape)}
    exported = {n for n in exported if n.startswith("orch_")}
    on_dashboard = set().union(*(metric_names(e) for e in panel_queries().values()))
    on_dashboard = {re.sub(r"_(bucket|count|sum)$", "", n) for n in on_dashboard}
    assert not exported - on_dashboard, f"exported but on no panel: {sorted(exported - on_dashboard)}"
    documented = _documented_metrics()
    assert not exported - documented, f"exported but not in docs/observability.md: {sorted(exported - documented)}"
    missing = documented - exported - set(NOT_YET_EXPORTED)
    assert not missing, f"documented but not exported: {sorted(missing)}"


async def _check_queries(prom: Prometheus) -> None:
    queries = panel_queries()

    async def all_answer() -> bool:
        empty = [
            f"{title} / {legend}: {expr}"
            for (title, legend), expr in queries.items()
            if (title, legend) not in QUIET_PANEL_QUERIES and not await prom.query(expr)
        ]
        return not empty

    # The rates need two scrapes of a change: wait, then say which query is empty.
    try:
        await eventually(all_answer, timeout=20, every=1)
    except AssertionError:
        empty = [f"{t} / {lg}: {e}" for (t, lg), e in queries.items() if not await prom.query(e)]
        raise AssertionError("panel queries without data:\n" + "\n".join(empty)) from None
    print(f"{len(queries)} panel queries answered with data")

    assert set(alert_rules()) == set(QUIET_ALERTS) | set(FIRING_ALERTS)
    for name, expr in alert_rules().items():
        result = await prom.query(expr)
        if name in QUIET_ALERTS:
            assert not result, f"{name} fires on a healthy gateway: {result}"
        else:
            assert result, f"{name} returned nothing"
        for metric in metric_names(expr):
            assert await prom.query(f"count({metric})"), f"{name}: {metric} has no series"
    print(f"{len(alert_rules())} alert expressions evaluated; their metrics have series")


async def _check_rules(prom: Prometheus) -> None:
    async def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in (await prom.api("/api/v1/rules"))["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else None

    rules = await eventually(evaluated, timeout=10, every=0.5)
    assert {r["name"] for r in rules} == set(alert_rules())
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    print("rules loaded by Prometheus:", ", ".join(f"{r['name']}={r['state']}" for r in rules))
