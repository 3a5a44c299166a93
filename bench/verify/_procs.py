"""What the checks start, kill and read: `orchestrator serve` and `orchestrator worker`
processes, their logs, /metrics, and the ledger of jobs and events in the database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import msgspec

import db
from core import signing

from .._infra import CHILDREN, BenchError, _group_alive, command, free_port
from ._handler import RUNS_FILE_ENV, read_runs

T = TypeVar("T")

# What a gateway writes when a request ended in a 500 or something else failed (not the warnings
# of a database going away: those are expected while it restarts).
PROBLEM = re.compile(r"^(ERROR|CRITICAL)\b|\b(ERROR|CRITICAL) uvicorn|unhandled error|Exception in ASGI application")


async def until(check: Callable[[], Awaitable[T | None]], what: str, *, timeout: float, every: float = 0.05) -> T:
    """Retry `check` until it returns something truthy; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:g} s (last {value!r})")
        await asyncio.sleep(every)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Serve:
    """`orchestrator serve` in a process group of its own; its output goes to one file across
    restarts, so that nothing it ever said is lost."""

    def __init__(
        self, dsn: str, token: str, folder: Path, *, workers: int = 1, env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.logfile = folder / f"gateway-{self.port}.log"
        self._env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "ORCH_ADMIN_TOKEN": token,
            "ORCH_LOG_FORMAT": "text",
            **(env or {}),
        }
        if workers > 1:
            # Shared by the processes behind the port; ours, so a kill -9 leaves nothing behind elsewhere.
            metrics = folder / f"metrics-{self.port}"
            metrics.mkdir(exist_ok=True)
            self._env["ORCH_METRICS_DIR"] = str(metrics)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [command("orchestrator"), "serve", "--port", str(self.port), "--workers", str(self.workers)]
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        CHILDREN.add(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.logfile.read_text(errors="replace")
        return ""

    def problems(self) -> list[str]:
        """Lines of the log that tell of a 500 or an error."""
        return [line for line in self.output().splitlines() if PROBLEM.search(line)]

    def worker_pids(self) -> set[int]:
        """The gateway processes behind the port (uvicorn's spawned workers; not its resource tracker)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.pid).children(recursive=True)
            return {c.pid for c in children if c.is_running() and "spawn_main" in " ".join(c.cmdline())}
        return set()

    async def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"the gateway exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        if self.workers > 1 and len(self.worker_pids()) < self.workers:
            return False
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r,
            ):
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await until(self.ready, f"gateway on port {self.port} ready", timeout=timeout, every=0.05)

    def kill(self) -> None:
        """kill -9 of the whole group: the supervisor and every gateway process."""
        if self.proc is None:
            return
        _kill_group(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        CHILDREN.forget(self.pid)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _kill_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        _kill_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        CHILDREN.forget(self.pid)


class Worker:
    """`orchestrator worker bench.verify._handler:handle`: a worker as a user runs it."""

    def __init__(
        self,
        url: str,
        api_key: str,
        worker_id: str,
        runs_file: Path,
        *,
        concurrency: int = 4,
        lease_seconds: int = 2,
        queues: str = "default",
    ) -> None:
        self.worker_id = worker_id
        self.logfile = runs_file.parent / f"worker-{worker_id}.log"
        env = {**os.environ, "ORCH_API_KEY": api_key, RUNS_FILE_ENV: str(runs_file)}
        cmd = [
            command("orchestrator"),
            "worker",
            "bench.verify._handler:handle",
            "--url",
            url,
            "--worker-id",
            worker_id,
            "--concurrency",
            str(concurrency),
            "--lease-seconds",
            str(lease_seconds),
            "--queues",
            queues,
            "--log-level",
            "WARNING",
        ]
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        CHILDREN.add(self.proc)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.logfile.read_text(errors="replace")
        return ""

    def kill(self) -> None:
        """kill -9: no goodbye, its leases left to run out."""
        _kill_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        CHILDREN.forget(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        CHILDREN.forget(self.proc.pid)
        return self.proc.returncode


# --- HTTP -----------------------------------------------------------------------------------


async def admin_post(url: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url + path, data=msgspec.json.encode(body), headers=headers) as r:
        raw = await r.read()
        if r.status != 201:
            raise BenchError(f"POST {path}: {r.status} {raw[:500]!r}")
        out: dict[str, Any] = msgspec.json.decode(raw)
        return out


async def tenant(url: str, token: str, tenant_id: str, **fields: Any) -> str:
    """Create a tenant (weight, max_inflight, ...); its API key."""
    key: str = (await admin_post(url, token, "/v1/admin/tenants", {"id": tenant_id, **fields}))["api_key"]
    return key


async def worker_key(url: str, token: str) -> str:
    key: str = (await admin_post(url, token, "/v1/admin/worker-keys", {}))["api_key"]
    return key


async def signed(url: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One signed request; (status, decoded body or None)."""
    raw = b"" if body is None else msgspec.json.encode(body)
    headers = {**signing.sign_headers(key, method, path, raw), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.request(method, url + path, data=raw or None, headers=headers) as r:
        data = await r.read()
        return r.status, (msgspec.json.decode(data) if data and "json" in r.headers.get("content-type", "") else None)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def metrics(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
        text = await r.text()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_"))
            out[(sample.name, labels)] = sample.value
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and set(match.items()) <= set(labels))


def http_500s(samples: Samples) -> int:
    return int(total(samples, "orch_http_request_duration_seconds_count", status="500"))


def http_requests(samples: Samples) -> int:
    return int(total(samples, "orch_http_request_duration_seconds_count"))


# --- the database -----------------------------------------------------------------------------


async def fetch(dsn: str, query: str, *args: Any, timeout: float = 30.0) -> list[asyncpg.Record]:
    """One query on a connection of its own, retried while the server is away (it may be
    restarting under a check)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await db.connect(dsn, application_name="orchestrator-verify")
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if isinstance(
                exc, asyncpg.PostgresSyntaxError | asyncpg.UndefinedColumnError | asyncpg.UndefinedTableError
            ):
                raise
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def fetchval(dsn: str, query: str, *args: Any) -> Any:
    rows = await fetch(dsn, query, *args)
    return rows[0][0] if rows else None


async def finished(dsn: str, tenants: list[str]) -> int:
    """How many of the tenants' jobs are terminal."""
    n: int = await fetchval(
        dsn,
        "SELECT count(*) FROM jobs WHERE tenant_id = ANY($1) AND state IN ('succeeded', 'dead', 'cancelled')",
        tenants,
    )
    return n


async def wait_terminal(dsn: str, tenants: list[str], n: int, timeout: float) -> float:
    """Wait until all `n` jobs of the tenants are terminal; the seconds it took."""
    t0 = time.monotonic()

    async def done() -> bool:
        return await finished(dsn, tenants) >= n

    await until(done, f"{n} jobs terminal", timeout=timeout, every=0.2)
    return time.monotonic() - t0


@dataclass
class Ledger:
    """What the database and the workers' notes say happened to a set of jobs."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    started: int = 0
    succeeded_events: int = 0
    succeeded_twice: int = 0  # jobs with more than one job.succeeded
    succeeded_without_event: int = 0
    overlapping_leases: int = 0  # a job.started while the job's previous lease had not ended
    duplicate_tokens: int = 0
    retried: int = 0  # jobs that needed more than one attempt
    runs: int = 0
    runs_repeated: int = 0  # a handler run twice for one attempt
    runs_beyond_attempts: int = 0  # a run of an attempt the job never had
    jobs_never_run: int = 0

    @property
    def lost(self) -> int:
        return self.jobs - self.states.get("succeeded", 0)

    def problems(self, expected_jobs: int) -> list[str]:
        out = []
        if self.jobs != expected_jobs:
            out.append(f"{self.jobs} jobs in the database, {expected_jobs} submitted")
        if self.lost:
            out.append(f"{self.lost} jobs not succeeded: {self.states}")
        for name in (
            "succeeded_twice",
            "succeeded_without_event",
            "overlapping_leases",
            "duplicate_tokens",
            "runs_repeated",
            "runs_beyond_attempts",
        ):
            if getattr(self, name):
                out.append(f"{name.replace('_', ' ')}: {getattr(self, name)}")
        if self.succeeded_events != self.states.get("succeeded", 0):
            out.append(
                f"{self.succeeded_events} job.succeeded events for {self.states.get('succeeded', 0)} succeeded jobs"
            )
        return out


_LEDGER_JOBS = """
SELECT state::text AS state, count(*) AS n, sum(attempts) AS attempts,
       count(*) FILTER (WHERE attempts > 1) AS retried
  FROM jobs WHERE tenant_id = ANY($1) GROUP BY state
"""
_LEDGER_EVENTS = """
WITH ev AS (
    SELECT job_id, type, (data->>'lease_token')::bigint AS token,
           lag(type) OVER (PARTITION BY job_id ORDER BY id) AS before
      FROM events WHERE tenant_id = ANY($1)
)
SELECT count(*) FILTER (WHERE type = 'job.started') AS started,
       count(*) FILTER (WHERE type = 'job.succeeded') AS succeeded,
       count(*) FILTER (WHERE type = 'job.started' AND before = 'job.started') AS overlapping,
       count(token) - count(DISTINCT token) AS duplicate_tokens
  FROM ev
"""
_LEDGER_TWICE = """
SELECT count(*) FILTER (WHERE n > 1) AS twice, count(*) FILTER (WHERE n = 0) AS without
  FROM (SELECT j.id, count(e.id) AS n FROM jobs j
          LEFT JOIN events e ON e.job_id = j.id AND e.type = 'job.succeeded'
         WHERE j.tenant_id = ANY($1) AND j.state = 'succeeded' GROUP BY j.id) x
"""


async def ledger(dsn: str, tenants: list[str], runs_file: Path | None = None) -> Ledger:
    led = Ledger()
    for r in await fetch(dsn, _LEDGER_JOBS, tenants):
        led.states[r["state"]] = r["n"]
        led.jobs += r["n"]
        led.attempts += r["attempts"]
        led.retried += r["retried"]
    ev = (await fetch(dsn, _LEDGER_EVENTS, tenants))[0]
    led.started, led.succeeded_events = ev["started"], ev["succeeded"]
    led.overlapping_leases, led.duplicate_tokens = ev["overlapping"], ev["duplicate_tokens"]
    twice = (await fetch(dsn, _LEDGER_TWICE, tenants))[0]
    led.succeeded_twice, led.succeeded_without_event = twice["twice"], twice["without"]
    if runs_file is not None:
        attempts = {
            str(r["id"]): r["attempts"]
            for r in await fetch(dsn, "SELECT id, attempts FROM jobs WHERE tenant_id = ANY($1)", tenants)
        }
        runs = read_runs(str(runs_file)) if runs_file.exists() else []
        led.runs = len(runs)
        led.runs_repeated = sum(n - 1 for n in Counter(runs).values() if n > 1)
        led.runs_beyond_attempts = sum(1 for job_id, a in runs if a > attempts.get(job_id, 0))
        led.jobs_never_run = len(set(attempts) - {job_id for job_id, _ in runs})
    return led
