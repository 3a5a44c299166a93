"""What the bench starts and stops: the database, gateway processes, worker agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgspec

import db

from ._protocol import AgentConfig, AgentReport

STOP_GRACE_S = 10.0


class BenchError(RuntimeError):
    """Something the bench started did not behave."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(f: IO[bytes], chars: int = 4000) -> str:
    f.flush()
    f.seek(0)
    return f.read().decode(errors="replace")[-chars:]


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Children:
    """Every process group the bench started, so that all of them can be stopped, also on errors."""

    def __init__(self) -> None:
        self._groups: dict[int, subprocess.Popen[bytes] | asyncio.subprocess.Process] = {}

    def add(self, proc: subprocess.Popen[bytes] | asyncio.subprocess.Process) -> None:
        self._groups[proc.pid] = proc

    def forget(self, pid: int) -> None:
        self._groups.pop(pid, None)

    def kill_all(self) -> None:
        """Synchronous last resort: SIGTERM every group still known, then SIGKILL what is left."""
        if not self._groups:
            return
        for pid in self._groups:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for pid in list(self._groups):
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.05)
            _signal_group(pid, signal.SIGKILL)
        self._groups.clear()


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


CHILDREN = Children()


# --- the database -------------------------------------------------------------------------


def command(name: str) -> str:
    """A console script of this environment (`orchestrator`, `pgq`), as a user would run it."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"no `{name}` command in this environment")
    return found


def run_command(args: list[str], env: dict[str, str], what: str) -> None:
    out = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        raise BenchError(f"{what} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")


class PgServer:
    """The PostgreSQL server of a run: an embedded one, or the server `server_url` names."""

    def __init__(self, server_url: str | None) -> None:
        self._embedded: db.EmbeddedPostgres | None = None
        self._tmp: str | None = None
        self.kind = "external" if server_url else "embedded"
        if server_url:
            self.dsn = server_url
        else:
            self._tmp = tempfile.mkdtemp(prefix="orch-bench-")
            self._embedded = db.EmbeddedPostgres(Path(self._tmp) / "pg")
            self.dsn = self._embedded.dsn()
        self.databases: list[Database] = []

    def database(self, prefix: str = "orch_bench") -> Database:
        database = Database(self, f"{prefix}_{uuid.uuid4().hex[:10]}")
        self.databases.append(database)
        return database

    async def drop_all(self) -> None:
        for database in self.databases:
            with contextlib.suppress(Exception):
                await database.drop()

    def stop(self) -> None:
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.stop()
            self._embedded = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class Database:
    """A fresh database for one run on `server`."""

    def __init__(self, server: PgServer, name: str) -> None:
        self.server = server
        self.name = name
        self.kind = server.kind
        self.dsn = db.with_database(server.dsn, name)
        self._created = False

    async def create(self, settings: dict[str, str] | None = None) -> None:
        conn = await db.connect(self.server.dsn, application_name="orchestrator-bench")
        try:
            await db.database_create(conn, self.name)
            self._created = True
            for name, value in (settings or {}).items():
                literal = "'" + value.replace("'", "''") + "'"
                await conn.execute(f'ALTER DATABASE "{self.name}" SET {name} = {literal}')
        finally:
            await conn.close()

    def migrate(self) -> None:
        """`orchestrator migrate`, as an operator would."""
        run_command([command("orchestrator"), "migrate"], {"DATABASE_URL": self.dsn}, "orchestrator migrate")

    async def drop(self) -> None:
        if not self._created:
            return
        conn = await db.connect(self.server.dsn, application_name="orchestrator-bench")
        try:
            await db.database_drop(conn, self.name)
            self._created = False
        finally:
            await conn.close()


# --- gateway processes --------------------------------------------------------------------


class Gateway:
    """`orchestrator serve` as a child process group on a free loopback port."""

    def __init__(
        self,
        dsn: str,
        admin_token: str,
        *,
        workers: int,
        notifier: bool = True,
        safety_poll_seconds: float | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.notifier = notifier
        env = dict(os.environ)
        env["DATABASE_URL"] = dsn
        env["ORCH_ADMIN_TOKEN"] = admin_token
        env["ORCH_NOTIFIER"] = "on" if notifier else "off"
        if safety_poll_seconds is not None:
            env["ORCH_SAFETY_POLL_SECONDS"] = str(safety_poll_seconds)
        env.update(extra or {})
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        cmd = [command("orchestrator"), "serve", "--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        CHILDREN.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return _tail(self._log)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"the gateway exited with {self.proc.returncode}:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status == 200 and self._all_workers_up():
                            return
                if time.monotonic() > deadline:
                    raise BenchError(f"the gateway was not ready within {timeout:.0f} s:\n{self.output()}")
                await asyncio.sleep(0.1)

    def _all_workers_up(self) -> bool:
        if self.workers <= 1:
            return True
        try:
            import psutil
        except ImportError:
            return True
        try:
            return len(psutil.Process(self.pid).children()) >= self.workers
        except psutil.Error:
            return True

    async def stop(self) -> None:
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                _signal_group(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        # The uvicorn supervisor is gone; make sure none of its workers outlived it.
        _signal_group(self.pid, signal.SIGKILL)
        CHILDREN.forget(self.pid)
        self._log.close()


# --- admin API ----------------------------------------------------------------------------


class Admin:
    """The operator's calls the bench needs: tenants and a shared worker key."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.url + path, data=msgspec.json.encode(body or {}), headers=self._headers) as r,
        ):
            raw = await r.read()
            if r.status != 201:
                raise BenchError(f"POST {path}: {r.status} {raw[:500]!r}")
            out: dict[str, Any] = msgspec.json.decode(raw)
            return out

    async def tenant(self, tenant_id: str) -> str:
        key: str = (await self._post("/v1/admin/tenants", {"id": tenant_id}))["api_key"]
        return key

    async def worker_key(self) -> str:
        key: str = (await self._post("/v1/admin/worker-keys"))["api_key"]
        return key


# --- worker agents ------------------------------------------------------------------------


REPORT_LINE_LIMIT = 256 * 1024 * 1024


class Agent:
    """One worker process (`python -m bench._agent`, or `bench._pgq_agent` for pgqueuer): ready → go →
    stop, with a report at the end."""

    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes], name: str) -> None:
        self.proc = proc
        self._log = log
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, config: AgentConfig, module: str = "bench._agent", timeout: float = 60.0) -> Agent:
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the agent is reaped)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            msgspec.json.encode(config).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            # The report is one line; a soak's holds two numbers for each of many thousand jobs.
            limit=REPORT_LINE_LIMIT,
        )
        CHILDREN.add(proc)
        agent = cls(proc, log, config.name)
        line = await agent._read_line(timeout)
        if line != b"ready":
            raise BenchError(f"agent {config.name} did not start ({line!r}):\n{_tail(log)}")
        return agent

    async def _read_line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        try:
            return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).strip()
        except TimeoutError:
            return b""

    def _send(self, command: bytes) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.write(command + b"\n")

    def go(self) -> None:
        self._send(b"go")

    async def stop(self, timeout: float = 60.0) -> AgentReport:
        self._send(b"stop")
        line = await self._read_line(timeout)
        try:
            report = msgspec.json.decode(line, type=AgentReport)
        except msgspec.DecodeError as exc:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)  # so its last words are in the log
            raise BenchError(
                f"agent {self.name} gave no report ({exc}; {len(line):,} bytes: {line[:200]!r}):\n{_tail(self._log)}"
            ) from None
        await self._reap()
        return report

    async def _reap(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            _signal_group(self.pid, signal.SIGKILL)
            await self.proc.wait()
        CHILDREN.forget(self.pid)
        self._log.close()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
        await self._reap()


async def start_agents(configs: list[AgentConfig], module: str = "bench._agent") -> list[Agent]:
    started = await asyncio.gather(*(Agent.start(c, module) for c in configs), return_exceptions=True)
    agents = [a for a in started if isinstance(a, Agent)]
    errors = [e for e in started if isinstance(e, BaseException)]
    if errors:
        await stop_agents_hard(agents)
        raise errors[0]
    return agents


async def stop_agents(agents: list[Agent]) -> list[AgentReport]:
    try:
        return list(await asyncio.gather(*(a.stop() for a in agents)))
    except BaseException:
        await stop_agents_hard(agents)
        raise


async def stop_agents_hard(agents: list[Agent]) -> None:
    await asyncio.gather(*(a.kill() for a in agents), return_exceptions=True)
