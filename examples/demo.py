"""The whole system in one run: start `orchestrator serve` (embedded PostgreSQL in a scratch
folder), create three tenants weighted 1, 2 and 5, run two workers with a shared worker key
(they serve every tenant, by weighted fair share), submit a mixed load — one tenant floods a
large backlog, the others burst and then submit steadily; some jobs fail and retry, some snooze,
some are delayed, a few are poison — show it live, print a summary, and stop everything.

    python -m examples.demo [--flood 3000] [--seconds 12] [--database-url postgresql://...] [--keep]

It prints the console's address (`/ui`) and where the admin token to sign in with is; `--keep`
leaves the server and workers running after the summary, for the console, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from core import JobState, is_terminal
from sdk import (
    Cancel,
    Handler,
    Job,
    JobSubmit,
    ProducerClient,
    Retry,
    Snooze,
    WorkerClient,
    WorkerRunner,
    current_job,
)

TENANTS = (("bulk", 1), ("standard", 2), ("premium", 5))
STEADY_PER_TICK = {"bulk": 0, "standard": 2, "premium": 3}  # jobs every 100 ms
WORKERS = 2
CONCURRENCY = 16
TICK_S = 0.1
READY_DEADLINE_S = 60.0
DRAIN_DEADLINE_S = 40.0
STOP_DEADLINE_S = 15.0
WINDOW_S = 2.0  # live throughput and wait are over the last two seconds
REDRAW_S = 0.25
PLAIN_EVERY_S = 2.0


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
        # Where a person finds the token to sign in to the console with.
        self.token_path = data_dir / "admin_token"
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(admin_token + "\n")
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

    def stop(self) -> str:
        """SIGTERM to the process group, SIGKILL after the deadline; says how it went."""
        try:
            if self.proc.poll() is not None:
                return f"the server had already exited ({self.proc.returncode})"
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                return f"the server did not stop within {STOP_DEADLINE_S:.0f} s and was killed"
            return "server stopped cleanly" if code == 0 else f"the server exited with status {code}"
        finally:
            self._log.close()


# --- live statistics, kept by the handlers themselves ----------------------------------------


@dataclass
class Stats:
    name: str
    weight: int
    tenant_id: str = ""
    api_key: str = ""
    submitted: int = 0
    running: int = 0
    succeeded: int = 0
    dead: int = 0
    retries: int = 0
    starts: int = 0
    ends: deque[float] = field(default_factory=deque)
    waits: deque[tuple[float, float]] = field(default_factory=deque)
    jobs: list[Job] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.succeeded + self.dead

    @property
    def queued(self) -> int:
        """Submitted and not running nor finished: ready, delayed, or waiting for a retry."""
        return max(0, self.submitted - self.finished - self.running)


class Board:
    """Per-tenant counters. Handlers run on the loop and in threads, hence the lock."""

    def __init__(self, tenants: Sequence[Stats]) -> None:
        self.tenants = list(tenants)
        self.by_id = {t.tenant_id: t for t in tenants}
        self.lock = threading.Lock()
        self.snoozed: set[str] = set()
        # Set once the load is over: the "bug" behind the crash jobs is fixed, so a dead one
        # replayed from the console succeeds.
        self.fixed = False
        self.t0 = time.monotonic()
        # Starts per tenant while every tenant had a backlog: what weighted sharing decides.
        self.contended_starts = {t.name: 0 for t in tenants}
        self.contended_s = 0.0
        self._last_starts = {t.name: 0 for t in tenants}

    @contextlib.contextmanager
    def track(self) -> Iterator[Job]:
        job = current_job()
        t = self.by_id[job.tenant_id]
        now = time.monotonic()
        wait_ms = (job.started_at - job.run_at).total_seconds() * 1000 if job.started_at else 0.0
        with self.lock:
            t.running += 1
            t.starts += 1
            t.waits.append((now, max(0.0, wait_ms)))
        outcome = "retried"
        try:
            yield job
            outcome = "succeeded"
        except Snooze:
            raise
        except Cancel:
            outcome = "dead"
            raise
        except BaseException:
            if job.attempts >= job.max_attempts:
                outcome = "dead"
            raise
        finally:
            with self.lock:
                t.running -= 1
                if outcome == "succeeded":
                    t.succeeded += 1
                elif outcome == "dead":
                    t.dead += 1
                else:
                    t.retries += 1
                if outcome != "retried":
                    t.ends.append(time.monotonic())

    def sample(self, interval_s: float, backlog: int) -> None:
        """Called every redraw: count the starts of an interval in which all tenants were backlogged."""
        with self.lock:
            contended = all(t.queued >= backlog for t in self.tenants)
            for t in self.tenants:
                if contended:
                    self.contended_starts[t.name] += t.starts - self._last_starts[t.name]
                self._last_starts[t.name] = t.starts
            if contended:
                self.contended_s += interval_s

    def rates(self) -> dict[str, tuple[float, float | None]]:
        """Per tenant: finished per second and p50 queue wait (ms) over the last WINDOW_S."""
        now = time.monotonic()
        out: dict[str, tuple[float, float | None]] = {}
        with self.lock:
            for t in self.tenants:
                while t.ends and t.ends[0] < now - WINDOW_S:
                    t.ends.popleft()
                while t.waits and t.waits[0][0] < now - WINDOW_S:
                    t.waits.popleft()
                p50 = statistics.median(w for _, w in t.waits) if t.waits else None
                out[t.name] = (len(t.ends) / WINDOW_S, p50)
        return out


# --- the handlers: dispatched by job kind ----------------------------------------------------


def handlers(board: Board) -> dict[str, Handler]:
    async def thumbnail(payload: dict[str, Any]) -> dict[str, Any]:
        with board.track() as job:
            await asyncio.sleep(payload["work_ms"] / 1000)
            if payload.get("poison"):
                raise Cancel("poison payload: not worth retrying")
            if payload.get("flaky") and job.attempts == 1:
                raise Retry(delay_ms=200, reason="the image store was busy; retry in 200 ms")
            return {"thumbnail": f"{payload['n']}.webp"}

    async def email(payload: dict[str, Any]) -> str:
        with board.track() as job:
            await asyncio.sleep(payload["work_ms"] / 1000)
            if payload.get("fail_first") and job.attempts == 1:
                raise ConnectionError("SMTP server timed out")  # retried with backoff, traceback kept
            return "sent"

    def report(payload: dict[str, Any]) -> str:
        # A plain function: the runner runs it in its thread pool.
        with board.track() as job:
            if payload.get("snooze_first") and job.id not in board.snoozed:
                board.snoozed.add(job.id)
                raise Snooze(300, reason="upstream data not ready; look again in 300 ms")
            time.sleep(payload["work_ms"] / 1000)
            return f"report {payload['n']}"

    async def crash(payload: dict[str, Any]) -> str | None:
        with board.track():
            if board.fixed:
                return "fixed: replayed after the load"
            raise RuntimeError("this job always fails (until the demo's load is over)")

    return {"thumbnail": thumbnail, "email": email, "report": report, "crash": crash}


def _job(rng: random.Random, n: int, *, flood: bool) -> JobSubmit:
    common: dict[str, Any] = {"max_attempts": 3, "retry_base_ms": 100, "retry_cap_ms": 1000}
    roll = rng.random()
    if flood or roll < 0.5:
        payload = {"n": n, "work_ms": rng.randint(20, 80), "flaky": rng.random() < 0.05, "poison": rng.random() < 0.01}
        return JobSubmit(payload=payload, kind="thumbnail", **common)
    if roll < 0.7:
        payload = {"n": n, "work_ms": rng.randint(10, 30), "fail_first": rng.random() < 0.15}
        return JobSubmit(payload=payload, kind="email", **common)
    if roll < 0.85:
        payload = {"n": n, "work_ms": rng.randint(30, 100), "snooze_first": rng.random() < 0.3}
        return JobSubmit(payload=payload, kind="report", **common)
    if roll < 0.98:
        payload = {"n": n, "work_ms": rng.randint(20, 80)}
        return JobSubmit(payload=payload, kind="thumbnail", delay_ms=rng.randint(500, 2000), **common)
    return JobSubmit(payload={"n": n}, kind="crash", max_attempts=2, retry_base_ms=100, retry_cap_ms=500)


# --- the display -------------------------------------------------------------------------------

COLUMNS = (
    ("tenant", 10),
    ("weight", 7),
    ("submitted", 10),
    ("queued", 8),
    ("running", 8),
    ("succeeded", 10),
    ("dead", 6),
    ("retries", 8),
    ("jobs/s", 8),
    ("p50 wait", 10),
)


def _row(values: Sequence[str]) -> str:
    first, *rest = values
    return f"{first:<{COLUMNS[0][1]}}" + "".join(f"{v:>{w}}" for v, (_, w) in zip(rest, COLUMNS[1:], strict=True))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


class Display:
    """A table redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, board: Board, stream: Any = None) -> None:
        self.board = board
        self.out = stream or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.drawn = 0
        self.last_plain = 0.0

    def lines(self, phase: str) -> list[str]:
        rates = self.board.rates()
        elapsed = time.monotonic() - self.board.t0
        head = f"{elapsed:5.1f} s  {phase}"
        rows = [head, _row([c for c, _ in COLUMNS]), "-" * sum(w for _, w in COLUMNS)]
        total = [0] * 6
        total_rate = 0.0
        with self.board.lock:
            snapshot = [
                (t.name, t.weight, t.submitted, t.queued, t.running, t.succeeded, t.dead, t.retries)
                for t in self.board.tenants
            ]
        for name, weight, submitted, queued, running, succeeded, dead, retries in snapshot:
            rate, p50 = rates[name]
            total_rate += rate
            for i, v in enumerate((submitted, queued, running, succeeded, dead, retries)):
                total[i] += v
            rows.append(
                _row(
                    [
                        name,
                        str(weight),
                        *(f"{v:,}" for v in (submitted, queued, running, succeeded, dead, retries)),
                        f"{rate:,.0f}",
                        _ms(p50),
                    ]
                )
            )
        rows.append(_row(["total", "", *(f"{v:,}" for v in total), f"{total_rate:,.0f}", ""]))
        return rows

    def update(self, phase: str) -> None:
        if self.tty:
            # A wrapped line would throw off the cursor arithmetic below.
            width = shutil.get_terminal_size().columns - 1
            lines = [line[:width] for line in self.lines(phase)]
            # Back to the first line of the last drawing, then overwrite each line.
            prefix = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.out.flush()
            self.drawn = len(lines)
            return
        now = time.monotonic()
        if now - self.last_plain < PLAIN_EVERY_S:
            return
        self.last_plain = now
        rates = self.board.rates()
        with self.board.lock:
            parts = [
                f"{t.name} {t.finished:,}/{t.submitted:,} done, {t.running} running, p50 wait {_ms(rates[t.name][1])}"
                for t in self.board.tenants
            ]
        elapsed = now - self.board.t0
        total_rate = sum(r for r, _ in rates.values())
        print(
            f"[{elapsed:5.1f} s] {phase}: " + " | ".join(parts) + f" | {total_rate:,.0f} jobs/s",
            file=self.out,
            flush=True,
        )

    def begin(self) -> None:
        if self.tty:
            self.out.write("\x1b[?25l")  # hide the cursor while redrawing

    def end(self) -> None:
        if self.tty:
            self.out.write("\x1b[?25h")
            self.out.flush()


# --- the run -----------------------------------------------------------------------------------


async def _admin(session: aiohttp.ClientSession, url: str, token: str, path: str, body: dict[str, Any]) -> Any:
    async with session.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.json(content_type=None)
        if r.status != 201:
            raise RuntimeError(f"POST {path}: {r.status} {data}")
        return data


async def _all_jobs(producer: ProducerClient) -> list[Job]:
    jobs: list[Job] = []
    after: str | None = None
    while True:
        page = await producer.list(limit=1000, after=after)
        jobs += page.jobs
        if page.next is None:
            return jobs
        after = page.next


def _summary(board: Board, finals: dict[str, list[Job]], duration_s: float) -> None:
    print()
    print(f"summary (from the server, {duration_s:.1f} s of load)")
    header = (
        f"{'tenant':<10}{'weight':>7}{'jobs':>7}{'succeeded':>10}{'dead':>6}{'retried':>8}"
        f"{'wait p50':>11}{'wait p90':>11}{'jobs/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for t in board.tenants:
        jobs = finals[t.name]
        waits = sorted((j.started_at - j.run_at).total_seconds() * 1000 for j in jobs if j.started_at is not None)
        p50 = waits[len(waits) // 2] if waits else None
        p90 = waits[int(len(waits) * 0.9)] if waits else None
        ends = [j.finished_at for j in jobs if j.finished_at is not None]
        elapsed = (max(ends) - min(j.created_at for j in jobs)).total_seconds() if ends else 0.0
        print(
            f"{t.name:<10}{t.weight:>7}{len(jobs):>7,}{sum(j.state is JobState.SUCCEEDED for j in jobs):>10,}"
            f"{sum(j.state is JobState.DEAD for j in jobs):>6,}{sum(j.attempts > 1 for j in jobs):>8,}"
            f"{_ms(p50):>11}{_ms(p90):>11}{(len(jobs) / elapsed if elapsed > 0 else 0):>8,.0f}"
        )
    starts = board.contended_starts
    total = sum(starts.values())
    if total and board.contended_s >= 0.5:
        weights = sum(t.weight for t in board.tenants)
        shares = ", ".join(
            f"{t.name} {starts[t.name] / total:.1%} (weight share {t.weight / weights:.1%})" for t in board.tenants
        )
        print(f"\nwhile all three had a backlog ({board.contended_s:.1f} s, {total:,} starts): {shares}")
    print(
        "\nretried = more than one attempt (snoozes give their attempt back); "
        "wait = ready to leased, of the last attempt"
    )


async def run(server: Server, admin_token: str, flood: int, seconds: float, suffix: str, *, keep: bool) -> int:
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        await server.wait_ready(session)
        print(f"server ready at {server.url} after {time.monotonic() - t0:.1f} s", flush=True)
        print(f"console: {server.url}/ui (sign in with the admin token in {server.token_path})", flush=True)
        tenants = [Stats(name, weight) for name, weight in TENANTS]
        for t in tenants:
            t.tenant_id = t.name + suffix
            created = await _admin(
                session, server.url, admin_token, "/v1/admin/tenants", {"id": t.tenant_id, "weight": t.weight}
            )
            t.api_key = created["api_key"]
        shared_key: str = (await _admin(session, server.url, admin_token, "/v1/admin/worker-keys", {}))["api_key"]

    board = Board(tenants)
    producers = {t.name: ProducerClient(server.url, api_key=t.api_key) for t in tenants}
    clients = [WorkerClient(server.url, worker_id=f"shared-{i + 1}", api_key=shared_key) for i in range(WORKERS)]
    kinds = handlers(board)
    runners = [WorkerRunner(c, handlers=kinds, concurrency=CONCURRENCY, shutdown_timeout_s=5) for c in clients]
    # Warnings (a lease lost, a retried request) would tear the live table; the summary tells the story.
    logging.getLogger("orchestrator.sdk").setLevel(logging.ERROR)
    tasks = [asyncio.create_task(r.run()) for r in runners]
    display = Display(board)
    rng = random.Random(7)
    print(
        f"{WORKERS} workers with a shared key ({CONCURRENCY} slots each) serve tenants weighted "
        + ", ".join(f"{t.name}={t.weight}" for t in tenants)
        + f"; {tenants[0].name} floods {flood:,} jobs, the others burst {flood // 4:,} and then submit steadily "
        f"for {seconds:g} s",
        flush=True,
    )
    print(
        "queued = ready, delayed or waiting to retry; jobs/s and p50 wait (ready to leased) cover the last "
        f"{WINDOW_S:g} s\n",
        flush=True,
    )

    async def submit(t: Stats, jobs: list[JobSubmit]) -> None:
        for b in range(0, len(jobs), 1000):
            created = await producers[t.name].submit_many(jobs[b : b + 1000])
            t.jobs += created
            with board.lock:
                t.submitted += len(created)

    async def load() -> None:
        counter = 0

        def batch(n: int, *, flood: bool) -> list[JobSubmit]:
            nonlocal counter
            counter += n
            return [_job(rng, counter - n + i, flood=flood) for i in range(n)]

        end = time.monotonic() + seconds
        await asyncio.gather(
            submit(tenants[0], batch(flood, flood=True)),
            *(submit(t, batch(flood // 4, flood=False)) for t in tenants[1:]),
        )
        while time.monotonic() < end:
            await asyncio.gather(
                *(submit(t, batch(STEADY_PER_TICK[t.name], flood=False)) for t in tenants if STEADY_PER_TICK[t.name])
            )
            await asyncio.sleep(TICK_S)

    def check_workers() -> None:
        for task in tasks:
            if task.done():
                task.result()  # a runner that gave up: show why
                raise RuntimeError("a worker stopped early")

    display.begin()
    started = time.monotonic()
    code = 0
    try:
        loader = asyncio.create_task(load())
        backlog = 2 * WORKERS * CONCURRENCY
        while not loader.done():
            check_workers()
            await asyncio.sleep(REDRAW_S)
            board.sample(REDRAW_S, backlog)
            display.update("submitting")
        loader.result()
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while True:
            with board.lock:
                pending = sum(t.submitted - t.finished for t in tenants)
            if not pending:
                break
            check_workers()
            if time.monotonic() > deadline:
                print(f"\n{pending:,} jobs not finished within {DRAIN_DEADLINE_S:.0f} s", flush=True)
                code = 1
                break
            await asyncio.sleep(REDRAW_S)
            board.sample(REDRAW_S, backlog)
            display.update("draining")
        display.update("all finished" if not code else "giving up")
        duration = time.monotonic() - started
    finally:
        display.end()
        for r in runners:
            r.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_DEADLINE_S)
        for c in clients:
            await c.close()
    try:
        # The handler-side counts can run ahead of the server by the last batch of acks: ask it.
        finals = {t.name: await _all_jobs(producers[t.name]) for t in tenants}
        open_jobs = sum(not is_terminal(j.state) for jobs in finals.values() for j in jobs)
        _summary(board, finals, duration)
        if open_jobs:
            print(f"\n{open_jobs:,} jobs were not finished", flush=True)
            code = 1
        print(f"\nworkers stopped; {sum(len(v) for v in finals.values()):,} jobs in {duration:.1f} s", flush=True)
    finally:
        for p in producers.values():
            await p.close()
    if keep:
        await _keep_serving(server, shared_key, kinds, board)
    return code


async def _keep_serving(server: Server, shared_key: str, kinds: dict[str, Handler], board: Board) -> None:
    """The server and fresh workers stay up for the console until Ctrl-C (or SIGTERM)."""
    board.fixed = True
    clients = [WorkerClient(server.url, worker_id=f"shared-{i + 1}", api_key=shared_key) for i in range(WORKERS)]
    runners = [WorkerRunner(c, handlers=kinds, concurrency=CONCURRENCY, shutdown_timeout_s=5) for c in clients]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"\nthe server and {WORKERS} workers keep running: open {server.url}/ui, sign in with the admin token in "
        f"{server.token_path}, find a dead crash job and replay it (the bug is fixed now); Ctrl-C stops everything",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for r in runners:
            r.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_DEADLINE_S)
        for c in clients:
            await c.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=3000, help="jobs the bulk tenant submits at once (default 3000)")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the steady load lasts (default 12)")
    parser.add_argument(
        "--database-url",
        help="use this PostgreSQL (migrated if behind) instead of an embedded one in a scratch folder",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the summary, keep the server and workers running for the console at /ui until Ctrl-C",
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
            code = asyncio.run(run(server, admin_token, args.flood, args.seconds, suffix, keep=args.keep))
        except BaseException:
            print(f"--- server log (last lines) ---\n{server.log_tail()}\n---", file=sys.stderr, flush=True)
            raise
        finally:
            print(server.stop(), flush=True)
    print(f"done in {time.monotonic() - t0:.1f} s (server start-up and shut-down included)")
    return code


if __name__ == "__main__":
    sys.exit(main())
