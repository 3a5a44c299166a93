"""The whole system in one run: start `orchestrator serve` (embedded PostgreSQL in a scratch
folder), create two tenants, run a worker per tenant, submit a few hundred jobs — some fail
once and are retried, some are delayed, a few are poison — wait for all of them, and print
what happened per tenant.

    python -m examples.demo [--jobs 300] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from core import JobState, is_terminal
from sdk import Cancel, Job, JobSubmit, ProducerClient, Retry, WorkerClient, WorkerRunner

TENANTS = (("acme", 2), ("globex", 1))
CONCURRENCY = 8
BATCH = 50
READY_DEADLINE_S = 60.0
FINISH_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`orchestrator serve` as a child process in its own process group."""

    def __init__(self, data_dir: Path, admin_token: str, database_url: str | None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ORCH_DATA_DIR": str(data_dir), "ORCH_ADMIN_TOKEN": admin_token}
        env.pop("DATABASE_URL", None)
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        if database_url:
            env["DATABASE_URL"] = database_url
            cmd.append("--migrate")
        self.log_path = data_dir / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url + "/readyz") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {READY_DEADLINE_S:.0f} s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(STOP_DEADLINE_S)
                except subprocess.TimeoutExpired:
                    print(f"the server did not stop within {STOP_DEADLINE_S:.0f} s; killing it", flush=True)
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            self._log.close()


@dataclass
class Tenant:
    id: str
    weight: int
    api_key: str
    submitted: list[Job]


def _plan(n_jobs: int) -> list[JobSubmit]:
    """Every 10th job fails once, every 40th is delayed by a second, every 100th is poison."""
    jobs = []
    for i in range(n_jobs):
        payload: dict[str, Any] = {"n": i, "work_ms": 5 + i % 20, "flaky": i % 10 == 3, "poison": i % 100 == 57}
        jobs.append(JobSubmit(payload=payload, kind="demo", max_attempts=3, delay_ms=1000 if i % 40 == 7 else None))
    return jobs


def _handler(tenant_id: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    failed_once: set[int] = set()

    async def handle(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(payload["work_ms"] / 1000)
        if payload["poison"]:
            raise Cancel("poison payload: not worth retrying")
        if payload["flaky"] and payload["n"] not in failed_once:
            failed_once.add(payload["n"])
            raise Retry(delay_ms=100, reason="transient failure, retry in 100 ms")
        return {"tenant": tenant_id, "n": payload["n"]}

    return handle


async def _create_tenant(session: aiohttp.ClientSession, url: str, token: str, tenant_id: str, weight: int) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{url}/v1/admin/tenants", json={"id": tenant_id, "weight": weight}, headers=headers) as r:
        body = await r.json(content_type=None)
        if r.status != 201:
            raise RuntimeError(f"creating tenant {tenant_id}: {r.status} {body}")
        key: str = body["api_key"]
        return key


async def _all_jobs(producer: ProducerClient) -> list[Job]:
    jobs: list[Job] = []
    after: str | None = None
    while True:
        page = await producer.list(limit=1000, after=after)
        jobs += page.jobs
        if page.next is None:
            return jobs
        after = page.next


def _report(tenants: Sequence[Tenant], finals: dict[str, list[Job]]) -> None:
    header = (
        f"{'tenant':<14}{'weight':>7}{'submitted':>11}{'succeeded':>11}{'dead':>6}{'retried':>9}"
        f"{'elapsed s':>11}{'jobs/s':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for t in tenants:
        jobs = finals[t.id]
        succeeded = sum(j.state is JobState.SUCCEEDED for j in jobs)
        dead = sum(j.state is JobState.DEAD for j in jobs)
        retried = sum(j.attempts > 1 for j in jobs)
        # Server timestamps: first job created to last job finished.
        start = min(j.created_at for j in jobs)
        end = max(j.finished_at or j.created_at for j in jobs)
        elapsed = (end - start).total_seconds()
        rate = len(jobs) / elapsed if elapsed > 0 else 0.0
        print(
            f"{t.id:<14}{t.weight:>7}{len(t.submitted):>11}{succeeded:>11}{dead:>6}{retried:>9}{elapsed:>11.2f}{rate:>8.1f}"
        )
    print()


async def run(server: Server, admin_token: str, n_jobs: int, suffix: str) -> int:
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        await server.wait_ready(session)
        print(f"server ready at {server.url} after {time.monotonic() - t0:.1f} s", flush=True)
        tenants = []
        for name, weight in TENANTS:
            key = await _create_tenant(session, server.url, admin_token, name + suffix, weight)
            tenants.append(Tenant(name + suffix, weight, key, []))
    producers = {t.id: ProducerClient(server.url, api_key=t.api_key) for t in tenants}
    workers = [WorkerClient(server.url, worker_id=f"demo-{t.id}", tenant_id=t.id, api_key=t.api_key) for t in tenants]
    runners = [WorkerRunner(w, _handler(t.id), concurrency=CONCURRENCY) for w, t in zip(workers, tenants, strict=True)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        per_tenant = n_jobs // len(tenants)
        print(
            f"submitting {per_tenant * len(tenants)} jobs across {len(tenants)} tenants, one worker each "
            f"(concurrency {CONCURRENCY})",
            flush=True,
        )
        started = time.monotonic()

        async def submit(t: Tenant) -> None:
            plan = _plan(per_tenant)
            for b in range(0, len(plan), BATCH):
                t.submitted += await producers[t.id].submit_many(plan[b : b + BATCH])

        await asyncio.gather(*(submit(t) for t in tenants))
        total = sum(len(t.submitted) for t in tenants)
        deadline = time.monotonic() + FINISH_DEADLINE_S
        last_print = 0.0
        while True:
            finals = {t.id: await _all_jobs(producers[t.id]) for t in tenants}
            done = sum(is_terminal(j.state) for jobs in finals.values() for j in jobs)
            if done == total:
                break
            for task in tasks:
                if task.done():
                    task.result()  # a runner that gave up: show why
                    raise RuntimeError("a worker stopped early")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {total} jobs finished within {FINISH_DEADLINE_S:.0f} s")
            if time.monotonic() - last_print >= 1:
                print(f"  {done}/{total} jobs finished", flush=True)
                last_print = time.monotonic()
            await asyncio.sleep(0.2)
        print(f"all {total} jobs finished in {time.monotonic() - started:.2f} s", flush=True)
        _report(tenants, finals)
        return 0
    finally:
        for r in runners:
            r.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_DEADLINE_S)
        for w in workers:
            await w.close()
        for p in producers.values():
            await p.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs to submit, split evenly between the tenants")
    parser.add_argument(
        "--database-url",
        help="use this PostgreSQL (migrated if behind) instead of an embedded one in a scratch folder",
    )
    args = parser.parse_args(argv)
    admin_token = secrets.token_urlsafe(24)
    # A shared database may already hold these tenants from an earlier run.
    suffix = f"-{secrets.token_hex(2)}" if args.database_url else ""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orch-demo-", ignore_cleanup_errors=True) as tmp:
        where = "" if args.database_url else " with an embedded PostgreSQL"
        print(f"starting the server{where} ...", flush=True)
        server = Server(Path(tmp), admin_token, args.database_url)
        try:
            code = asyncio.run(run(server, admin_token, args.jobs, suffix))
        except BaseException:
            print(f"--- server log (last lines) ---\n{server.log_tail()}\n---", file=sys.stderr, flush=True)
            raise
        finally:
            server.stop()
    print(f"done in {time.monotonic() - t0:.1f} s (server start-up included)")
    return code


if __name__ == "__main__":
    sys.exit(main())
