"""The measurements: latency, throughput, scale."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

import db
from core.wire import AckComplete, JobSubmit
from sdk import ProducerClient, WorkerClient

from ._agent import AgentConfig, AgentReport
from ._config import Config
from ._cpu import CpuMeter, own_pids, per_job_ms, postgres_pids, tree
from ._infra import Admin, Agent, BenchError, Database, Gateway, start_agents, stop_agents, stop_agents_hard
from ._profile import Recorder, hot_spots, top_inclusive
from ._report import Result, ratios, summary_ms

DEFAULT_SAFETY_POLL_S = 5.0
POLL_EVERY_S = 0.2
OUR_PACKAGES = ("gateway/", "db/", "notifier/", "core/", "sdk/", "bench/")

# Seeding the scale test: rows per INSERT statement.
SEED_CHUNK = 200_000

_SEED_FINISHED = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, attempts, max_attempts, run_at,
                  created_at, started_at, finished_at, result, lease_token, worker_id)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'default', 'seed', jsonb_build_object('n', g), 0,
       'succeeded', 1, 5, t.at, t.at, t.at, t.at + interval '20 milliseconds', '{"ok": true}'::jsonb, g,
       'seed-worker'
  FROM generate_series($2::bigint, $3::bigint) AS g
 CROSS JOIN LATERAL (SELECT now() - interval '1 day' + g * interval '10 milliseconds' AS at) t
"""

_SEED_WAITING = """
INSERT INTO jobs (tenant_id, queue, kind, payload, priority, state, max_attempts, run_at, created_at)
SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'backlog', 'seed', jsonb_build_object('n', g), 0,
       'ready', 5, now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series($2::bigint, $3::bigint) AS g
"""

_FIRST_UNFINISHED = """
SELECT id FROM jobs WHERE id >= $1 AND id <= $2 AND state <> 'succeeded' ORDER BY id LIMIT 1
"""

_SPAN = """
SELECT count(*) AS n,
       count(*) FILTER (WHERE state <> 'succeeded') AS unfinished,
       extract(epoch FROM min(started_at))::float8 AS first_start,
       extract(epoch FROM max(finished_at))::float8 AS last_finish
  FROM jobs WHERE id >= $1 AND id <= $2
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, cfg: Config, database: Database, results_dir: Path, stamp: str) -> None:
        self.cfg = cfg
        self.database = database
        self.results_dir = results_dir
        self.stamp = stamp
        self.token = secrets.token_urlsafe(24)
        self.gateway: Gateway | None = None
        self._conn: asyncpg.Connection | None = None
        self.tenants: list[tuple[str, str]] = []
        self.worker_key = ""
        self.producers: list[ProducerClient] = []
        self.cpu = CpuMeter()
        self.result: Result = {}

    # --- set-up and tear-down ---------------------------------------------------------

    @property
    def conn(self) -> asyncpg.Connection:
        assert self._conn is not None
        return self._conn

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    async def setup(self) -> None:
        log(f"database: {self.database.kind} PostgreSQL, fresh database {self.database.name}")
        settings = dict(x.split("=", 1) for x in self.cfg.db_settings)
        if settings:
            log("database settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        await self.database.create(settings)
        await asyncio.to_thread(self.database.migrate)
        self._conn = await db.connect(self.database.dsn, application_name="orchestrator-bench")
        self.result["postgres"] = await self._postgres_info()
        pg = postgres_pids(self.conn.get_server_pid())
        if pg is not None:
            self.cpu.groups["postgres"] = pg
        self.cpu.groups["bench"] = own_pids
        await self.start_gateway(notifier=True)
        admin = Admin(self.url, self.token)
        for i in range(self.cfg.tenants):
            tenant_id = f"bench-{i}"
            self.tenants.append((tenant_id, await admin.tenant(tenant_id)))
        self.worker_key = await admin.worker_key()
        self._open_producers()

    async def _postgres_info(self) -> Result:
        settings = {}
        for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections", "work_mem"):
            settings[name] = await self.conn.fetchval("SELECT current_setting($1)", name)
        return {
            "version": await self.conn.fetchval("SHOW server_version"),
            "version_full": await self.conn.fetchval("SELECT version()"),
            "settings": settings,
        }

    def _open_producers(self) -> None:
        self.producers = [ProducerClient(self.url, api_key=key) for _, key in self.tenants]

    async def _fresh_producers(self) -> None:
        """New client sessions for a phase: keep-alive connections left idle through a long step
        (seeding, a restart) may have been closed by the server meanwhile."""
        await self._close_producers()
        self._open_producers()

    async def _close_producers(self) -> None:
        for p in self.producers:
            with contextlib.suppress(Exception):
                await p.close()
        self.producers = []

    async def start_gateway(self, *, notifier: bool) -> None:
        had_producers = bool(self.producers)
        await self._close_producers()
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None
        cfg = self.cfg
        gw = Gateway(
            self.database.dsn,
            self.token,
            workers=cfg.gateway_workers,
            notifier=notifier,
            safety_poll_seconds=cfg.safety_poll_seconds,
        )
        self.gateway = gw
        await gw.wait_ready()
        self.cpu.groups["gateway"] = tree(gw.pid)
        if had_producers:
            self._open_producers()
        log(f"gateway: {cfg.gateway_workers} process(es) on {gw.url}, LISTEN/NOTIFY {'on' if notifier else 'off'}")

    async def teardown(self) -> None:
        await self._close_producers()
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        await self.database.drop()

    # --- helpers ----------------------------------------------------------------------

    def _agent(self, name: str, mode: str, *, concurrency: int, runners: int = 1) -> AgentConfig:
        return AgentConfig(
            name=name, url=self.url, api_key=self.worker_key, mode=mode, runners=runners, concurrency=concurrency
        )

    def _watch(self, agents: list[Agent]) -> None:
        pids = [a.pid for a in agents]
        self.cpu.groups["workers"] = lambda: [p for pid in pids for p in tree(pid)()]

    async def _paced(self, n: int, rate: float, *, warm: bool = False) -> tuple[list[int], list[float]]:
        """Submit `n` jobs one at a time at a steady rate (open loop: a slow answer does not
        delay the next submit); each payload carries its submit time in ns."""
        loop = asyncio.get_running_loop()
        submit_ms: list[float] = []
        producers = self.producers

        async def one(i: int) -> int:
            p = producers[i % len(producers)]
            t0 = time.perf_counter()
            payload: dict[str, Any] = {"w": i} if warm else {"t": time.time_ns()}
            job = await p.submit(payload)
            submit_ms.append((time.perf_counter() - t0) * 1000)
            return int(job.id)

        tasks: list[asyncio.Task[int]] = []
        start = loop.time() + 0.02
        try:
            for i in range(n):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            ids = list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return ids, submit_ms

    async def _wait_done(self, ids: list[int], timeout: float) -> asyncpg.Record:
        """Wait until every job in the id range has succeeded; returns its count and time span."""
        lo, hi = min(ids), max(ids)
        cursor = lo
        deadline = time.monotonic() + timeout
        while True:
            first = await self.conn.fetchval(_FIRST_UNFINISHED, cursor, hi)
            if first is None:
                break
            cursor = first
            if time.monotonic() > deadline:
                span = await self.conn.fetchrow(_SPAN, lo, hi)
                assert span is not None
                raise BenchError(f"{span['unfinished']} of {span['n']} jobs were not done within {timeout:.0f} s")
            await asyncio.sleep(POLL_EVERY_S)
        span = await self.conn.fetchrow(_SPAN, lo, hi)
        assert span is not None
        if span["n"] != len(ids):
            log(f"note: {span['n']} jobs in the id range, {len(ids)} submitted")
        return span

    async def _submit_batches(self, n: int, queue: str = "default") -> tuple[list[int], float]:
        """Submit `n` jobs in batches from `submitters` concurrent clients; ids and seconds taken."""
        cfg = self.cfg
        batches: asyncio.Queue[tuple[ProducerClient, list[JobSubmit]]] = asyncio.Queue()
        for b, start in enumerate(range(0, n, cfg.batch)):
            jobs = [JobSubmit(payload={"i": i}, queue=queue) for i in range(start, min(n, start + cfg.batch))]
            batches.put_nowait((self.producers[b % len(self.producers)], jobs))
        ids: list[int] = []

        async def submitter() -> None:
            while not batches.empty():
                producer, jobs = batches.get_nowait()
                ids.extend(int(j.id) for j in await producer.submit_many(jobs))

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(cfg.submitters)))
        return ids, time.perf_counter() - t0

    # --- latency ----------------------------------------------------------------------

    def _safety_poll(self) -> float:
        return self.cfg.safety_poll_seconds or DEFAULT_SAFETY_POLL_S

    async def latency(self, label: str) -> Result:
        """Submit→handler-start of jobs submitted one by one to idle workers parked on long-polls."""
        cfg = self.cfg
        n = max(1, round(cfg.rate * cfg.latency_seconds))
        log(f"latency ({label}): {cfg.latency_workers} idle worker process(es); {n:,} jobs at {cfg.rate:g}/s")
        await self._fresh_producers()
        agents = await start_agents(
            [
                self._agent(f"lat-{i}", "latency", concurrency=cfg.latency_concurrency)
                for i in range(cfg.latency_workers)
            ]
        )
        timeout = cfg.latency_seconds + 4 * self._safety_poll() + 30
        try:
            self._watch(agents)
            for a in agents:
                a.go()
            # Warm-up: connections, prepared statements, every worker parked again afterwards.
            warm, _ = await self._paced(max(20, round(cfg.rate / 2)), cfg.rate, warm=True)
            await self._wait_done(warm, timeout)
            await asyncio.sleep(0.5)
            before = self.cpu.sample()
            t0 = time.perf_counter()
            ids, submit_ms = await self._paced(n, cfg.rate)
            submit_wall = time.perf_counter() - t0
            await self._wait_done(ids, timeout)
            after = self.cpu.sample()
        except BaseException:
            await stop_agents_hard(agents)
            raise
        reports = await stop_agents(agents)
        self._check(reports)
        latencies = [ns / 1e6 for r in reports for ns in r.latencies_ns]
        out = summary_ms(latencies)
        out.update(
            jobs=n,
            received=len(latencies),
            rate_achieved=n / submit_wall if submit_wall else None,
            submit_p50_ms=summary_ms(submit_ms)["p50_ms"],
            submit_p99_ms=summary_ms(submit_ms)["p99_ms"],
            workers=cfg.latency_workers,
            concurrency=cfg.latency_concurrency,
            cpu_cores=CpuMeter.cores(before, after),
            cpu_ms_per_job=per_job_ms(before, after, n),
        )
        if label == "poll":
            out["safety_poll_s"] = self._safety_poll()
        log(
            f"latency ({label}): p50 {out['p50_ms']:.2f} ms, p90 {out['p90_ms']:.2f} ms, "
            f"p99 {out['p99_ms']:.2f} ms, max {out['max_ms']:.2f} ms"
        )
        return out

    @staticmethod
    def _check(reports: list[AgentReport]) -> None:
        for r in reports:
            for e in r.errors:
                log(f"worker {r.name}: {e}")

    # --- lease round trip -------------------------------------------------------------

    async def lease_rtt(self) -> Result:
        """Round trip of one lease (max_jobs=1, wait_ms=0) while ready jobs wait, one at a time."""
        n = self.cfg.leases
        warm = 20
        log(f"lease round trip: {n:,} sequential leases of one job")
        await self._fresh_producers()
        await self._submit_batches(n + warm)
        client = WorkerClient(self.url, worker_id="bench-rtt", api_key=self.worker_key)
        rtts: list[float] = []
        done: list[AckComplete] = []
        try:
            for i in range(n + warm):
                t0 = time.perf_counter()
                jobs = await client.lease(max_jobs=1, wait_ms=0)
                dt = (time.perf_counter() - t0) * 1000
                if not jobs:
                    raise BenchError(f"lease {i} found no job")
                if i >= warm:
                    rtts.append(dt)
                done += [AckComplete(id=j.id, lease_token=j.lease_token) for j in jobs]
            for start in range(0, len(done), 500):
                await client.ack(complete=done[start : start + 500])
        finally:
            await client.close()
        out = summary_ms(rtts)
        log(f"lease round trip: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms")
        return out

    # --- throughput -------------------------------------------------------------------

    async def throughput(self, label: str, *, profile: bool = False) -> Result:
        cfg = self.cfg
        log(
            f"throughput ({label}): submit {cfg.jobs:,} jobs in batches of {cfg.batch}, then drain with "
            f"{cfg.drain_workers} x {cfg.drain_runners} runner(s) of concurrency {cfg.drain_concurrency}"
        )
        agents = await start_agents(
            [
                self._agent(f"drain-{i}", "drain", concurrency=cfg.drain_concurrency, runners=cfg.drain_runners)
                for i in range(cfg.drain_workers)
            ]
        )
        recorders: dict[str, Recorder] = {}
        prof: Result = {}
        try:
            self._watch(agents)
            await self._fresh_producers()
            ids, submit_s = await self._submit_batches(cfg.jobs)
            log(f"throughput ({label}): submitted {len(ids):,} jobs in {submit_s:.2f} s")
            if not cfg.burst:
                # Steady state, as autoanalyze would leave it: fresh statistics, and the plans the
                # gateways cached while the table was small invalidated.
                await self.conn.execute("ANALYZE jobs", timeout=600)
            if profile:
                recorders = await self._start_profiles(label, agents)
            before = self.cpu.sample()
            t_go = time.time()
            for a in agents:
                a.go()
            span = await self._wait_done(ids, timeout=max(120.0, cfg.jobs / 100))
            after = self.cpu.sample()
            for name, r in recorders.items():
                prof[name] = await self._finish_profile(r)
        except BaseException:
            for r in recorders.values():
                await r.stop()
            await stop_agents_hard(agents)
            raise
        reports = await stop_agents(agents)
        self._check(reports)
        drain_s = span["last_finish"] - t_go
        out = self._drain_figures(reports)
        out.update(
            jobs=len(ids),
            batch=cfg.batch,
            submitters=cfg.submitters,
            submit_seconds=submit_s,
            submit_jobs_per_s=len(ids) / submit_s,
            drain_seconds=drain_s,
            drain_jobs_per_s=len(ids) / drain_s,
            analyzed_before_drain=not cfg.burst,
            worker_processes=cfg.drain_workers,
            runners=cfg.drain_runners,
            concurrency=cfg.drain_concurrency,
            cpu_cores=CpuMeter.cores(before, after),
            cpu_ms_per_job=per_job_ms(before, after, len(ids)),
        )
        if prof:
            self.result["profile"] = {
                "samples": prof.get("gateway", {}).get("samples", 0),
                **{k: v.get("self", []) for k, v in prof.items()},
                **{f"{k}_ours": v.get("ours", []) for k, v in prof.items()},
                "files": {k: v.get("file") for k, v in prof.items()},
            }
        log(
            f"throughput ({label}): submit {out['submit_jobs_per_s']:,.0f} jobs/s, drain {out['drain_jobs_per_s']:,.0f}"
            f" jobs/s (lease batch {out['lease_batch_mean']:.1f}, ack batch {out['ack_batch_mean']:.1f})"
        )
        return out

    @staticmethod
    def _drain_figures(reports: list[AgentReport]) -> Result:
        lease_calls = sum(r.lease_calls for r in reports)
        nonempty = sum(r.lease_nonempty for r in reports)
        leased = sum(r.leased for r in reports)
        singles = sum(r.complete_calls + r.fail_calls for r in reports)
        acks = sum(r.ack_calls for r in reports)
        acked = sum(r.acked for r in reports)
        reports_sent = singles + acks
        if acks and singles:
            mode = "acknowledged by /v1/workers/ack batches and single complete/fail calls"
        elif acks:
            mode = "acknowledged in /v1/workers/ack batches"
        else:
            mode = "acknowledged one job per complete call"
        return {
            "handled": sum(r.handled for r in reports),
            "lease_calls": lease_calls,
            "lease_empty": lease_calls - nonempty,
            "lease_batch_mean": leased / nonempty if nonempty else 0.0,
            "lease_max": max((r.lease_max for r in reports), default=0),
            "ack_calls": reports_sent,
            "ack_batch_mean": (singles + acked) / reports_sent if reports_sent else 0.0,
            "ack_mode": mode,
            "heartbeats": sum(r.heartbeat_calls for r in reports),
        }

    async def _start_profiles(self, label: str, agents: list[Agent]) -> dict[str, Recorder]:
        assert self.gateway is not None
        self.results_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, Recorder] = {}
        for name, pid in (("gateway", self.gateway.pid), ("worker", agents[0].pid)):
            path = self.results_dir / f"{self.stamp}-{label}-{name}.pyspy.txt"
            try:
                out[name] = Recorder(pid, path)
            except FileNotFoundError as exc:
                log(f"no profile: {exc}")
                break
        if out:
            await asyncio.sleep(1.0)  # py-spy attaches before the drain starts
        return out

    @staticmethod
    async def _finish_profile(recorder: Recorder) -> Result:
        text = await recorder.stop()
        if not recorder.output.exists():
            log(f"py-spy wrote no profile: {text.strip()[-500:]}")
            return {}
        samples, top = hot_spots(recorder.output)
        return {
            "samples": samples,
            "self": top,
            "ours": top_inclusive(recorder.output, OUR_PACKAGES),
            "file": str(recorder.output),
        }

    # --- scale ------------------------------------------------------------------------

    async def seed(self) -> Result:
        """1,000,000 succeeded jobs over every tenant, and 100,000 ready ones in a queue no bench
        worker serves (so they stay waiting), inserted with SQL; then VACUUM ANALYZE and a
        checkpoint."""
        cfg = self.cfg
        admin = Admin(self.url, self.token)
        background = [f"bg-{i:02d}" for i in range(cfg.background_tenants)]
        for tenant_id in background:
            await admin.tenant(tenant_id)
        everyone = [t for t, _ in self.tenants] + background
        log(f"scale: inserting {cfg.scale_finished:,} succeeded and {cfg.scale_waiting:,} waiting jobs")
        t0 = time.perf_counter()
        for sql, total in ((_SEED_FINISHED, cfg.scale_finished), (_SEED_WAITING, cfg.scale_waiting)):
            for start in range(1, total + 1, SEED_CHUNK):
                await self.conn.execute(sql, everyone, start, min(total, start + SEED_CHUNK - 1), timeout=600)
        # Steady state, not the aftermath of a bulk load: without this, the autovacuum of the
        # fresh rows and the checkpoint that writes them out run during the measurements.
        await self.conn.execute("VACUUM (ANALYZE) jobs", timeout=600)
        await self.conn.execute("ANALYZE", timeout=600)
        try:
            await self.conn.execute("CHECKPOINT", timeout=600)
        except asyncpg.InsufficientPrivilegeError:
            log("scale: no privilege to CHECKPOINT; measuring anyway")
        seconds = time.perf_counter() - t0
        size = await self.conn.fetchval("SELECT pg_total_relation_size('jobs')")
        rows = await self.conn.fetchval("SELECT count(*) FROM jobs")
        log(f"scale: seeded in {seconds:.1f} s; jobs table {size / 1e6:,.0f} MB, {rows:,} rows")
        return {
            "finished": cfg.scale_finished,
            "waiting": cfg.scale_waiting,
            "tenants": len(everyone),
            "seconds": seconds,
            "table_mb": size / 1e6,
            "rows": rows,
        }

    # --- the whole run ----------------------------------------------------------------

    async def event_trigger_cost(self, with_trigger: Result | None) -> Result:
        """Drain again with the events table's NOTIFY trigger off: what the outbox's wake-ups cost."""
        await self.conn.execute("ALTER TABLE events DISABLE TRIGGER events_notify")
        try:
            without = await self.throughput("no_event_trigger")
        finally:
            await self.conn.execute("ALTER TABLE events ENABLE TRIGGER events_notify")
        out: Result = {"drain_jobs_per_s_without": without["drain_jobs_per_s"]}
        if with_trigger is not None:
            out["drain_jobs_per_s_with"] = with_trigger["drain_jobs_per_s"]
            out["with_over_without"] = with_trigger["drain_jobs_per_s"] / without["drain_jobs_per_s"]
            log(
                f"event trigger: drain {out['drain_jobs_per_s_with']:.0f} jobs/s with, {without['drain_jobs_per_s']:.0f} without"
            )
        return out

    async def run(self) -> Result:
        cfg = self.cfg
        phases = set(cfg.phases)
        res = self.result
        await self.setup()
        scale = "scale" in phases
        empty: Result = {}
        if "latency" in phases or scale:
            notify = await self.latency("notify")
            res.setdefault("latency", {})["notify"] = notify
            empty["latency"] = notify
        if "throughput" in phases or scale:
            empty["lease"] = await self.lease_rtt()
            tp = await self.throughput("empty", profile=cfg.profile)
            res.setdefault("throughput", {})["empty"] = tp
            empty["submit_jobs_per_s"] = tp["submit_jobs_per_s"]
            empty["drain_jobs_per_s"] = tp["drain_jobs_per_s"]
        if "trigger" in phases:
            res["event_trigger"] = await self.event_trigger_cost(res.get("throughput", {}).get("empty"))
        if "poll" in phases:
            await self.start_gateway(notifier=False)
            res.setdefault("latency", {})["poll"] = await self.latency("poll")
            if scale:
                await self.start_gateway(notifier=True)
        if scale:
            seed = await self.seed()
            loaded: Result = {"latency": await self.latency("loaded"), "lease": await self.lease_rtt()}
            tp = await self.throughput("loaded")
            res.setdefault("throughput", {})["loaded"] = tp
            loaded["submit_jobs_per_s"] = tp["submit_jobs_per_s"]
            loaded["drain_jobs_per_s"] = tp["drain_jobs_per_s"]
            res["scale"] = {"seed": seed, "empty": empty, "loaded": loaded, "ratios": ratios(empty, loaded)}
        return res
