"""Test support: a signed HTTP client, servers on free ports, and waiting with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import uvicorn
from aiohttp import web
from multidict import CIMultiDict

from core import Settings, signing
from gateway import create_app

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, every: float = 0.05) -> T:
    """Retry `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(every)


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]
    raw: bytes


class Api:
    """Raw HTTP against a gateway: signs with any key, and can sign wrongly on purpose."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.session.close()

    async def _send(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        data = io.BytesIO(body) if len(body) > 65536 else (body or None)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            ctype = r.headers.get("content-type", "")
            parsed = msgspec.json.decode(raw) if raw and "json" in ctype else raw
            return Reply(r.status, parsed, CIMultiDict(r.headers), raw)

    async def admin(self, method: str, path: str, json: Any = None, *, token: str | None = None) -> Reply:
        body = b"" if json is None else msgspec.json.encode(json)
        headers = {"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"}
        return await self._send(method, path, body, headers)

    async def signed(
        self,
        key: str,
        method: str,
        path: str,
        json: Any = None,
        *,
        body: bytes | None = None,
        timestamp: float | None = None,
        nonce: str | None = None,
        sign_body: bytes | None = None,
        sign_key: str | None = None,
        drop: str | None = None,
    ) -> Reply:
        """Send a signed request; the keyword arguments bend the signature for negative tests."""
        raw = body if body is not None else (b"" if json is None else msgspec.json.encode(json))
        headers = signing.sign_headers(
            sign_key or key, method, path, raw if sign_body is None else sign_body, now=timestamp
        )
        if sign_key is not None:
            headers[signing.HEADER_KEY_ID] = signing.split_api_key(key)[0]
        if nonce is not None:
            _, secret = signing.split_api_key(sign_key or key)
            ts = headers[signing.HEADER_TIMESTAMP]
            headers[signing.HEADER_NONCE] = nonce
            headers[signing.HEADER_SIGNATURE] = signing.signature(
                secret, method, path, ts, nonce, raw if sign_body is None else sign_body
            )
        if drop is not None:
            headers.pop(drop)
        headers["Content-Type"] = "application/json"
        return await self._send(method, path, raw, headers)

    async def signed_with_headers(
        self, key: str, method: str, path: str, json: Any, headers: Mapping[str, str]
    ) -> Reply:
        raw = msgspec.json.encode(json)
        signed = {**signing.sign_headers(key, method, path, raw), **headers, "Content-Type": "application/json"}
        return await self._send(method, path, raw, signed)

    async def tenant(self, tenant_id: str, **fields: Any) -> str:
        """Create a tenant; returns its API key."""
        r = await self.admin("POST", "/v1/admin/tenants", {"id": tenant_id, **fields})
        assert r.status == 201, r.body
        key: str = r.body["api_key"]
        return key

    async def worker_key(self) -> str:
        r = await self.admin("POST", "/v1/admin/worker-keys")
        assert r.status == 201, r.body
        key: str = r.body["api_key"]
        return key


class InProcessGateway:
    """The real app behind a real uvicorn server on a free loopback port, in the test's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 20
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("gateway exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        # As `orchestrator serve` does on SIGTERM: parked requests answer, then the server stops.
        if self.server.started:
            self.runtime.begin_drain()
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 20)


class GatewayProcess:
    """`orchestrator serve` as a real child process (or several, with --workers)."""

    def __init__(
        self,
        database_url: str | None,
        admin_token: str | None,
        *,
        workers: int = 1,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        child_env = dict(os.environ if env is None else env)
        if database_url is not None:
            child_env["DATABASE_URL"] = database_url
        if admin_token is not None:
            child_env["ORCH_ADMIN_TOKEN"] = admin_token
        args = ["serve", "--port", str(self.port), "--workers", str(workers), *(extra_args or [])]
        # A file, not a pipe: a pipe nobody reads would block the server once full.
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            env=child_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async with aiohttp.ClientSession() as s:

            async def ready() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.output()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.url + "/readyz") as r:
                        return r.status == 200
                return False

            await eventually(ready, timeout=timeout, every=0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> str:
        """Stop the process group (SIGTERM, then SIGKILL) and return what it printed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        output = self.output()
        self._log.close()
        return output


@contextlib.asynccontextmanager
async def running(gw: InProcessGateway) -> AsyncIterator[InProcessGateway]:
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def fetch(database_url: str, query: str, *args: Any) -> list[Any]:
    """Inspect the database directly (tests only: product SQL lives in db/)."""
    import db

    conn = await db.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def fetchval(database_url: str, query: str, *args: Any) -> Any:
    rows = await fetch(database_url, query, *args)
    return rows[0][0] if rows else None


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A Prometheus exposition as {(sample name, labels): value}, OpenTelemetry's own labels left out."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            out[(s.name, labels)] = s.value
    return out


def metric_total(samples: Samples, name: str, **match: str) -> float:
    """The sum of a metric's samples whose labels include `match`."""
    return sum(v for (n, labels), v in samples.items() if n == name and set(match.items()) <= set(labels))


def snapshot_totals(folder: Path, name: str, **match: str) -> dict[int, float]:
    """A metric's total in each process's own snapshot (`serve --workers N` with ORCH_METRICS_DIR),
    by the pid the snapshot is named after."""
    totals: dict[int, float] = {}
    for path in folder.glob("*.prom"):
        with contextlib.suppress(FileNotFoundError):
            totals[int(path.stem)] = metric_total(metric_samples(path.read_text()), name, **match)
    return totals


def worker_pids(gw: GatewayProcess) -> set[int]:
    """The gateway processes `serve --workers N` started (uvicorn spawns them; its resource tracker is no gateway)."""
    import psutil

    pids = set()
    for child in psutil.Process(gw.proc.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # killed, not yet reaped
    return pids


async def submit_until_every_process_served(
    gw: GatewayProcess, key: str, folder: Path, *, processes: int = 2, timeout: float = 30.0
) -> tuple[int, dict[int, float]]:
    """Submit one job at a time, each on a new connection (so the processes behind the port take
    them as they come), until every process's snapshot counts a submit. Returns how many were
    submitted and the submits counted by pid."""
    submitted = 0

    async def every_process_served() -> dict[int, float] | None:
        nonlocal submitted
        one = Api(gw.url, "")
        try:
            r = await one.signed(key, "POST", "/v1/jobs", {"payload": {"n": submitted}})
            assert r.status == 201, r.body
            submitted += 1
        finally:
            await one.close()
        per_process = snapshot_totals(folder, "orch_jobs_submitted_total")
        return per_process if len(per_process) == processes and all(per_process.values()) else None

    per_process = await eventually(every_process_served, timeout=timeout, every=0.02)
    return submitted, per_process


@contextlib.asynccontextmanager
async def serve_routes(
    port: int, posts: Mapping[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
) -> AsyncIterator[None]:
    """An aiohttp server on 127.0.0.1:`port` answering POSTs to each path with its handler."""
    app = web.Application()
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()
