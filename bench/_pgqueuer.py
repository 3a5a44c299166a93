"""pgqueuer measured like the orchestrator: the same database server, jobs, worker processes,
batch sizes and latency protocol, driven with pgqueuer's own public API and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import version

import asyncpg
import msgspec
from pgqueuer import AsyncpgDriver, Queries

from ._config import Config
from ._cpu import CpuMeter, RssMeter, own_pids, per_job_ms, postgres_pids, tree
from ._infra import Agent, BenchError, Database, command, run_command, start_agents, stop_agents, stop_agents_hard
from ._latency import latency_figures
from ._pgq_agent import ENTRYPOINT
from ._protocol import AgentConfig
from ._report import Result
from ._session import POLL_EVERY_S, check, log, paced
from ._throughput import drain_figures

AGENT = "bench._pgq_agent"

_ANY_LEFT = "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE id >= $1 AND id <= $2)"
_SPAN = """
SELECT count(*) AS n, extract(epoch FROM max(created))::float8 AS last_finish
  FROM pgqueuer_log WHERE job_id >= $1 AND job_id <= $2 AND status = 'successful'
"""


def pgqueuer_version() -> str:
    return version("pgqueuer")


class PgqSession:
    """pgqueuer on one fresh database: `pgq install`, producers, worker processes."""

    def __init__(self, cfg: Config, database: Database) -> None:
        self.cfg = cfg
        self.database = database
        self._conns: list[asyncpg.Connection] = []
        self.producers: list[Queries] = []
        self.cpu = CpuMeter()

    @property
    def conn(self) -> asyncpg.Connection:
        return self._conns[0]

    async def setup(self) -> None:
        log(f"pgqueuer {pgqueuer_version()}: fresh database {self.database.name}")
        await self.database.create()
        await asyncio.to_thread(run_command, [command("pgq"), "install"], {"PGDSN": self.database.dsn}, "pgq install")
        # One connection for the bench's own queries, one per concurrent submitter.
        for _ in range(1 + max(1, self.cfg.submitters)):
            self._conns.append(
                await asyncpg.connect(self.database.dsn, server_settings={"application_name": "pgqueuer-bench"})
            )
        self.producers = [Queries(AsyncpgDriver(c)) for c in self._conns[1:]]
        pg = postgres_pids(self.conn.get_server_pid())
        if pg is not None:
            self.cpu.groups["postgres"] = pg
        self.cpu.groups["bench"] = own_pids

    async def teardown(self) -> None:
        for c in self._conns:
            with contextlib.suppress(Exception):
                await c.close()
        self._conns = []
        await self.database.drop()

    def _agents(self, prefix: str, mode: str, n: int, batch_size: int) -> list[AgentConfig]:
        return [
            AgentConfig(name=f"{prefix}-{i}", url=self.database.dsn, mode=mode, concurrency=batch_size)
            for i in range(n)
        ]

    def _watch(self, agents: list[Agent]) -> None:
        pids = [a.pid for a in agents]
        self.cpu.groups["workers"] = lambda: [p for pid in pids for p in tree(pid)()]

    async def _wait_done(self, ids: list[int], timeout: float) -> asyncpg.Record:
        """Until no job of the id range is left in the queue; their count and last finish in the log."""
        lo, hi = min(ids), max(ids)
        deadline = time.monotonic() + timeout
        while await self.conn.fetchval(_ANY_LEFT, lo, hi):
            if time.monotonic() > deadline:
                raise BenchError(f"pgqueuer: jobs {lo}..{hi} were not all done within {timeout:.0f} s")
            await asyncio.sleep(POLL_EVERY_S)
        span = await self.conn.fetchrow(_SPAN, lo, hi)
        assert span is not None
        if span["n"] != len(ids):
            raise BenchError(f"pgqueuer: {span['n']} of {len(ids)} jobs logged as successful")
        return span

    async def _paced(self, n: int, rate: float, *, warm: bool = False) -> tuple[list[int], list[float]]:
        producer = self.producers[0]

        async def submit(i: int, t_ns: int | None) -> int:
            payload = b"w" if t_ns is None else str(t_ns).encode()
            return int((await producer.enqueue(ENTRYPOINT, payload))[0])

        return await paced(n, rate, submit, warm=warm)

    async def _submit_batches(self, n: int) -> tuple[list[int], float]:
        """`Queries.enqueue` with lists of `cfg.batch` jobs, from `submitters` connections at once."""
        cfg = self.cfg
        batches: asyncio.Queue[list[bytes | None]] = asyncio.Queue()
        for start in range(0, n, cfg.batch):
            batches.put_nowait([msgspec.json.encode({"i": i}) for i in range(start, min(n, start + cfg.batch))])
        ids: list[int] = []

        async def submitter(q: Queries) -> None:
            while not batches.empty():
                payloads = batches.get_nowait()
                ids.extend(await q.enqueue([ENTRYPOINT] * len(payloads), payloads, [0] * len(payloads)))

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter(q) for q in self.producers))
        return ids, time.perf_counter() - t0

    async def latency(self, batch_size: int) -> Result:
        cfg = self.cfg
        n = max(1, round(cfg.rate * cfg.latency_seconds))
        log(f"pgqueuer latency: {cfg.latency_workers} idle worker process(es); {n:,} jobs at {cfg.rate:g}/s")
        agents = await start_agents(self._agents("pgq-lat", "latency", cfg.latency_workers, batch_size), AGENT)
        timeout = cfg.latency_seconds + 60
        try:
            self._watch(agents)
            for a in agents:
                a.go()
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
        check(reports)
        out = latency_figures([ns / 1e6 for r in reports for ns in r.latencies_ns], submit_ms, n, submit_wall)
        out.update(
            workers=cfg.latency_workers,
            batch_size=batch_size,
            cpu_cores=CpuMeter.cores(before, after),
            cpu_ms_per_job=per_job_ms(before, after, n),
        )
        log(f"pgqueuer latency: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms")
        return out

    async def throughput(self, label: str, batch_size: int) -> Result:
        cfg = self.cfg
        log(f"pgqueuer throughput ({label}): {cfg.jobs:,} jobs, {cfg.drain_workers} x batch_size {batch_size}")
        agents = await start_agents(self._agents("pgq-drain", "drain", cfg.drain_workers, batch_size), AGENT)
        self._watch(agents)
        rss = RssMeter({"workers": self.cpu.groups["workers"]})
        try:
            ids, submit_s = await self._submit_batches(cfg.jobs)
            if not cfg.burst:
                await self.conn.execute("ANALYZE pgqueuer", timeout=600)
            before = self.cpu.sample()
            rss.start()
            t_go = time.time()
            for a in agents:
                a.go()
            span = await self._wait_done(ids, timeout=max(120.0, cfg.jobs / 100))
            after = self.cpu.sample()
            memory = await rss.stop()
        except BaseException:
            await rss.stop()
            await stop_agents_hard(agents)
            raise
        reports = await stop_agents(agents)
        check(reports)
        drain_s = span["last_finish"] - t_go
        out = drain_figures(reports)
        out.update(
            ack_mode="status logged in batches (Queries.log_jobs)",
            jobs=len(ids),
            batch=cfg.batch,
            submitters=cfg.submitters,
            submit_seconds=submit_s,
            submit_jobs_per_s=len(ids) / submit_s,
            drain_seconds=drain_s,
            drain_jobs_per_s=len(ids) / drain_s,
            worker_processes=cfg.drain_workers,
            batch_size=batch_size,
            cpu_cores=CpuMeter.cores(before, after),
            cpu_ms_per_job=per_job_ms(before, after, len(ids)),
            rss_mb=memory,
        )
        log(
            f"pgqueuer throughput ({label}): submit {out['submit_jobs_per_s']:,.0f} jobs/s, "
            f"drain {out['drain_jobs_per_s']:,.0f} jobs/s (dequeue batch {out['lease_batch_mean']:.1f})"
        )
        return out
