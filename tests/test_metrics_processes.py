"""`serve --workers 2` behind one port: the merged counters never go backwards when a gateway
process is killed and restarted, one process without LISTEN shows in the merged orch_listen_up
(and fires the alert), and tenant-chosen label values are capped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import merge
from gateway.telemetry.metrics import OTHER, QUEUE_LABELS_PER_TENANT

from .conftest import ADMIN_TOKEN
from .support import (
    Api,
    GatewayProcess,
    Samples,
    eventually,
    fetch,
    free_port,
    metric_samples,
    metric_total,
    snapshot_totals,
)
from .test_prometheus import PROMETHEUS, PROMTOOL, alert_rules, prometheus

pytestmark = pytest.mark.timeout(120)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _monotonic_series(text: str) -> Series:
    """The counter and histogram samples of a scrape: each must only grow."""
    out: Series = {}
    for fam in text_string_to_metric_families(text):
        if fam.type in ("counter", "histogram"):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _spread(api: Api) -> Api:
    """Every request on a new connection, so both processes behind the port take some."""
    old = api.session
    api.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    asyncio.get_running_loop().create_task(old.close())
    return api


async def _scrape(api: Api) -> str | None:
    try:
        r = await api.admin("GET", "/metrics")
    except aiohttp.ClientError:
        return None  # the connection went to the process being killed
    return r.raw.decode() if r.status == 200 else None


async def test_counters_stay_monotonic_when_a_gateway_process_is_killed(database_url: str, tmp_path: Path) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, env={**os.environ, "ORCH_METRICS_DIR": str(tmp_path)})
    scrapes: list[Series] = []
    stop = asyncio.Event()
    load: list[asyncio.Task[None]] = []
    try:
        await gw.wait_ready()
        api = _spread(Api(gw.url, ADMIN_TOKEN))
        try:
            key = await api.tenant("tenant-a")
            worker = await api.worker_key()

            async def produce() -> None:
                while not stop.is_set():
                    with contextlib.suppress(aiohttp.ClientError):
                        await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 10})

            async def work() -> None:
                while not stop.is_set():
                    with contextlib.suppress(aiohttp.ClientError):
                        r = await api.signed(
                            worker, "POST", "/v1/workers/lease", {"worker_id": "w", "max_jobs": 10, "wait_ms": 200}
                        )
                        for job in r.body["jobs"] if r.status == 200 else []:
                            await api.signed(
                                worker, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": job["lease_token"]}
                            )

            async def scrape_until(done: asyncio.Event | None, count: int = 0) -> None:
                while (done is not None and not done.is_set()) or count > 0:
                    text = await _scrape(api)
                    if text is not None:
                        scrapes.append(_monotonic_series(text))
                        count -= 1
                    await asyncio.sleep(0.05)

            load += [asyncio.create_task(produce()), asyncio.create_task(work())]
            # both processes have counted submits before one dies

            async def both_counted() -> bool:
                counted = snapshot_totals(tmp_path, "orch_jobs_submitted_total")
                return len(counted) == 2 and all(counted.values())

            await eventually(both_counted, timeout=20)
            await scrape_until(None, count=20)
            before = sum_total(scrapes[-1], "orch_jobs_submitted_total")
            victim = min(_gateway_pids(gw))
            victim_counted = snapshot_totals(tmp_path, "orch_jobs_submitted_total")[victim]
            os.kill(victim, signal.SIGKILL)

            restarted = asyncio.Event()
            scraping = asyncio.create_task(scrape_until(restarted))

            async def replaced() -> bool:
                pids = _gateway_pids(gw)
                return (
                    len(pids) == 2
                    and victim not in pids
                    and len(snapshot_totals(tmp_path, "orch_jobs_submitted_total")) == 2
                )

            await eventually(replaced, timeout=30, every=0.2)
            restarted.set()
            await scraping
            await scrape_until(None, count=20)
            stop.set()
            await asyncio.gather(*load)
            load.clear()
            retired = metric_total(_samples_of(tmp_path / merge.RETIRED), "orch_jobs_submitted_total")
            after = sum_total(scrapes[-1], "orch_jobs_submitted_total")
        finally:
            stop.set()
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
            await api.session.close()
    finally:
        gw.stop()

    # every counter and histogram series of every scrape is at least what it was in the one before
    backwards = []
    for i in range(1, len(scrapes)):
        for series, value in scrapes[i - 1].items():
            now = scrapes[i].get(series)
            if now is None or now < value:
                backwards.append((i, series, value, now))
    print(
        f"{len(scrapes)} scrapes; orch_jobs_submitted_total {before:.0f} before the kill, {after:.0f} after; "
        f"the killed process had counted {victim_counted:.0f}, retired {retired:.0f}"
    )
    assert not backwards, backwards[:10]
    assert retired >= victim_counted > 0
    assert after > before


def _gateway_pids(gw: GatewayProcess) -> set[int]:
    """`worker_pids`, leaving out a killed process its parent has not reaped yet (a zombie)."""
    import psutil

    pids = set()
    for child in psutil.Process(gw.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


def sum_total(series: Series, name: str) -> float:
    return sum(v for (n, _), v in series.items() if n == name)


def _samples_of(path: Path) -> Samples:
    return metric_samples(path.read_text())


class ListenBlocker:
    """A TCP proxy in front of the real PostgreSQL that, once `block` is set, refuses new
    connections named 'orchestrator-listen': a process that loses its LISTEN then stays without."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        port = parts.port or 5432
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._user = parts.username or "postgres"
        self._database = parts.path.lstrip("/")
        self.block = False
        self.port = free_port()
        self._server: asyncio.Server | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{self._database}?sslmode=disable"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(8)
            length, _version = struct.unpack("!II", head)
            body = await reader.readexactly(length - 8)
            fields = body.split(b"\0")
            params = dict(zip(fields[0::2], fields[1::2], strict=False))
            if self.block and params.get(b"application_name") == b"orchestrator-listen":
                writer.close()
                return
            if self._unix is not None:
                up_r, up_w = await asyncio.open_unix_connection(self._unix)
            else:
                up_r, up_w = await asyncio.open_connection(*self._tcp)
            up_w.write(head + body)
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


@contextlib.asynccontextmanager
async def listen_blocker(dsn: str) -> AsyncIterator[ListenBlocker]:
    proxy = ListenBlocker(dsn)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_one_process_without_listen_shows_in_the_merged_gauge_and_fires_the_alert(
    database_url: str, tmp_path: Path
) -> None:
    async with listen_blocker(database_url) as proxy:
        env = {**os.environ, "ORCH_METRICS_DIR": str(tmp_path / "metrics")}
        gw = GatewayProcess(proxy.dsn, ADMIN_TOKEN, workers=2, env=env)
        try:
            await gw.wait_ready()
            api = _spread(Api(gw.url, ADMIN_TOKEN))
            try:
                await _listen_down_and_back(gw, api, proxy, database_url, tmp_path)
            finally:
                await api.session.close()
        finally:
            gw.stop()


async def _listen_backends(database_url: str) -> list[int]:
    rows = await fetch(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'orchestrator-listen' AND datname = current_database()",
    )
    return [r["pid"] for r in rows]


async def _merged_listen_up(api: Api) -> float | None:
    text = await _scrape(api)
    if text is None:
        return None
    for fam in text_string_to_metric_families(text):
        if fam.name == "orch_listen_up":
            return fam.samples[0].value
    return None


async def _listen_down_and_back(
    gw: GatewayProcess, api: Api, proxy: ListenBlocker, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"

    async def two_backends() -> list[int] | None:
        pids = await _listen_backends(database_url)
        return pids if len(pids) == 2 else None

    backends = await eventually(two_backends, timeout=20)
    assert await _merged_listen_up(api) == 1
    proxy.block = True
    assert (await fetch(database_url, "SELECT pg_terminate_backend($1)", backends[0]))[0][0] is True

    async def one_down() -> dict[int, float] | None:
        per_process = snapshot_totals(folder, "orch_listen_up")
        return per_process if sorted(per_process.values()) == [0.0, 1.0] else None

    per_process = await eventually(one_down, timeout=20)
    # whichever process answers, the merged value is the lowest: a sum would say 1
    for _ in range(6):
        assert await _merged_listen_up(api) == 0, per_process
    print("orch_listen_up per process:", per_process, "merged: 0")

    if PROMETHEUS is not None and PROMTOOL is not None:
        expr = alert_rules()["OrchestratorListenDown"]
        async with prometheus(f"127.0.0.1:{gw.port}", tmp_path / "prom") as prom:
            fired = await eventually(lambda: prom.query(expr), timeout=15, every=0.5)
            print(f"OrchestratorListenDown expression {expr!r} in Prometheus: {fired}")
            proxy.block = False

            async def back_up() -> bool:
                return not await prom.query(expr) and await _merged_listen_up(api) == 1

            await eventually(back_up, timeout=20, every=0.5)
    else:
        proxy.block = False

        async def listening_again() -> bool:
            return await _merged_listen_up(api) == 1

        await eventually(listening_again, timeout=20)
        pytest.skip(
            "the merged gauge was checked; the alert expression needs the prometheus binary "
            "(Debian: apt-get install prometheus; .ci/run installs it)"
        )


async def test_queue_label_values_are_capped_per_tenant_across_processes(database_url: str, tmp_path: Path) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, env={**os.environ, "ORCH_METRICS_DIR": str(tmp_path)})
    try:
        await gw.wait_ready()
        api = _spread(Api(gw.url, ADMIN_TOKEN))
        try:
            key = await api.tenant("tenant-a")
            other = await api.tenant("tenant-b")
            # new queues, one job each on a new connection, until both processes took some (50 at least)
            submitted = 0

            async def both_served() -> bool:
                nonlocal submitted
                for _ in range(10):
                    r = await api.signed(key, "POST", "/v1/jobs", {"queue": f"q{submitted:03d}", "payload": {}})
                    assert r.status == 201, r.body
                    submitted += 1
                counts = snapshot_totals(tmp_path, "orch_jobs_submitted_total")
                return submitted >= 50 and len(counts) == 2 and all(counts.values())

            await eventually(both_served, timeout=30, every=0.01)
            assert (await api.signed(other, "POST", "/v1/jobs", {"queue": "mine", "payload": {}})).status == 201

            async def merged() -> dict[str, float] | None:
                text = await _scrape(api)
                if text is None:
                    return None
                queues: dict[str, float] = {}
                for fam in text_string_to_metric_families(text):
                    if fam.name == "orch_jobs_submitted":
                        for s in fam.samples:
                            if s.labels.get("tenant") == "tenant-a":
                                queues[s.labels["queue"]] = queues.get(s.labels["queue"], 0) + s.value
                return queues if sum(queues.values()) == submitted else None

            queues = await eventually(merged, timeout=15)

            async def snapshots_caught_up() -> dict[int, float] | None:
                counts = snapshot_totals(tmp_path, "orch_jobs_submitted_total")
                return counts if sum(counts.values()) == submitted + 1 else None

            served = await eventually(snapshots_caught_up, timeout=10)
        finally:
            await api.session.close()
    finally:
        gw.stop()
    print(f"{submitted} queues; submits by process {served}; tenant-a's queue label values: {sorted(queues)}")
    assert len(served) == 2 and all(served.values()), served
    # both processes fold the same names: the first 20 queues keep theirs, the other 30 are one value
    assert set(queues) == {f"q{i:03d}" for i in range(QUEUE_LABELS_PER_TENANT)} | {OTHER}
    assert queues[OTHER] == submitted - QUEUE_LABELS_PER_TENANT
