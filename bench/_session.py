"""What every phase shares: the run's database, gateway, tenants, producers and worker agents."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

import db
from core.wire import JobSubmit
from sdk import ProducerClient

from ._config import Config
from ._cpu import CpuMeter, own_pids, postgres_pids, tree
from ._infra import Admin, Agent, BenchError, Database, Gateway
from ._protocol import AgentConfig, AgentReport
from ._report import Result

DEFAULT_SAFETY_POLL_S = 5.0
POLL_EVERY_S = 0.2

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


def check(reports: list[AgentReport]) -> None:
    for r in reports:
        for e in r.errors:
            log(f"worker {r.name}: {e}")


Submit = Callable[[int, int | None], Awaitable[int]]


async def paced(n: int, rate: float, submit: Submit, *, warm: bool = False) -> tuple[list[int], list[float]]:
    """Submit `n` jobs one at a time at a steady rate (open loop: a slow answer does not delay the
    next submit). `submit(i, submit_time_ns or None)` submits one and returns its id."""
    loop = asyncio.get_running_loop()
    submit_ms: list[float] = []

    async def one(i: int) -> int:
        t0 = time.perf_counter()
        job_id = await submit(i, None if warm else time.time_ns())
        submit_ms.append((time.perf_counter() - t0) * 1000)
        return job_id

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


class Session:
    """One system under test on one fresh database: set up, measured by the phases, torn down."""

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

    async def fresh_producers(self) -> None:
        """New client sessions for a phase: keep-alive connections left idle through a long step
        (seeding, a restart) may have been closed by the server meanwhile."""
        await self._close_producers()
        self._open_producers()

    async def _close_producers(self) -> None:
        for p in self.producers:
            with contextlib.suppress(Exception):
                await p.close()
        self.producers = []

    async def start_gateway(self, *, notifier: bool, env: dict[str, str] | None = None) -> None:
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
            extra=env,
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

    def agent(self, name: str, mode: str, *, concurrency: int, runners: int = 1) -> AgentConfig:
        return AgentConfig(
            name=name, url=self.url, api_key=self.worker_key, mode=mode, runners=runners, concurrency=concurrency
        )

    def watch(self, agents: list[Agent]) -> None:
        pids = [a.pid for a in agents]
        self.cpu.groups["workers"] = lambda: [p for pid in pids for p in tree(pid)()]

    def safety_poll(self) -> float:
        return self.cfg.safety_poll_seconds or DEFAULT_SAFETY_POLL_S

    async def paced(self, n: int, rate: float, *, warm: bool = False) -> tuple[list[int], list[float]]:
        """`paced` over the tenants' producers, round robin; each payload carries its submit time in ns."""
        producers = self.producers

        async def submit(i: int, t_ns: int | None) -> int:
            payload: dict[str, Any] = {"w": i} if t_ns is None else {"t": t_ns}
            return int((await producers[i % len(producers)].submit(payload)).id)

        return await paced(n, rate, submit, warm=warm)

    async def wait_done(self, ids: list[int], timeout: float) -> asyncpg.Record:
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

    async def submit_batches(self, n: int, queue: str = "default") -> tuple[list[int], float]:
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
