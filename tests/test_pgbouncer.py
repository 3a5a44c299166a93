"""The gateway behind a real PgBouncer in transaction mode (Debian's `pgbouncer`): its pool goes
through the pooler with asyncpg's statement cache off, its LISTEN connection straight to
PostgreSQL (ORCH_LISTEN_URL), and leases, wake-ups, long-polls, fair share and webhook
deliveries across two replicas work as direct."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

import db
from core import load_settings

from .support import Api, eventually, fetch, free_port
from .test_replicas import WEBHOOK_ENV, WebhookReceiver, complete, deliver_across, lease, metric, serving, submit_many

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
)
needs_pgbouncer = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)"
)
# PgBouncer refuses to run as root; as root it runs as the user the embedded PostgreSQL runs as.
SYSTEM_USER = "pgserver"


def _upstream(dsn: str) -> dict[str, str]:
    """Where a PostgreSQL URL points, as PgBouncer's connection string fields."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "127.0.0.1"
    port = str(parts.port or query.get("port") or "")
    if not port and host.startswith("/"):
        # A socket folder without a port: the port is in the socket's name.
        sockets = [p for p in Path(host).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
        port = sockets[0].name.rsplit(".", 1)[1] if sockets else "5432"
    fields = {"host": host, "port": port or "5432", "user": parts.username or query.get("user") or "postgres"}
    if parts.password:
        fields["password"] = parts.password
    return fields


def with_host(dsn: str, host: str, port: int) -> str:
    """The same database and user at another host and port."""
    parts = urlsplit(dsn)
    user = parts.username or dict(parse_qsl(parts.query)).get("user") or "postgres"
    password = f":{parts.password}" if parts.password else ""
    return f"postgresql://{user}{password}@{host}:{port}{parts.path}"


class PgBouncer:
    """PgBouncer in transaction mode on a free loopback port, in front of one server."""

    def __init__(self, upstream_dsn: str, *, pool_size: int = 20) -> None:
        assert PGBOUNCER is not None
        self.port = free_port()
        self._upstream = _upstream(upstream_dsn)
        self._tmp = Path(tempfile.mkdtemp(prefix="orch-pgbouncer-"))
        self._user: str | None = None
        self.log = self._tmp / "pgbouncer.log"
        target = " ".join(f"{k}={v}" for k, v in self._upstream.items())
        user = self._upstream["user"]
        (self._tmp / "userlist.txt").write_text(f'"{user}" ""\n')
        (self._tmp / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self._tmp / 'userlist.txt'}\n"
            f"admin_users = {user}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 500\n"
            f"default_pool_size = {pool_size}\n"
            f"logfile = {self.log}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, dsn: str) -> str:
        """`dsn`'s database through this PgBouncer."""
        return with_host(dsn, "127.0.0.1", self.port)

    def start(self) -> None:
        if os.geteuid() == 0:
            with warnings.catch_warnings():  # pgserver warns at import when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from pgserver.utils import ensure_user_exists

            entry = ensure_user_exists(SYSTEM_USER)
            assert entry is not None
            self._user = SYSTEM_USER
            for path in (self._tmp, *self._tmp.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        assert PGBOUNCER is not None
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(self._tmp / "pgbouncer.ini")],
            user=self._user,
            cwd=self._tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pgbouncer did not listen on {self.port}: {self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-4000:]
        return ""

    def admin(self, command: str) -> list[dict[str, str]]:
        """A command of PgBouncer's admin console (simple protocol only: psql, not asyncpg)."""
        out = subprocess.run(
            [
                db.pg_bin("psql"),
                f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self._upstream['user']}",
                "-X",
                "-A",
                "-F",
                "\t",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        lines = [line for line in out.stdout.splitlines() if line and not line.startswith("(")]
        header, rows = lines[0].split("\t"), lines[1:]
        return [dict(zip(header, row.split("\t"), strict=True)) for row in rows]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self._tmp, ignore_errors=True)


@pytest.fixture
def bouncer(database_url: str) -> Iterator[PgBouncer]:
    pgb = PgBouncer(database_url)
    pgb.start()
    try:
        yield pgb
    finally:
        pgb.stop()


def bouncer_env(bouncer: PgBouncer, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": bouncer.url(database_url),
        "ORCH_LISTEN_URL": database_url,
        "ORCH_DB_STATEMENT_CACHE": "off",
    }


async def _above(api: Api, name: str, floor: float) -> bool:
    return await metric(api, name) > floor


async def parked(api: Api) -> bool:
    return await _above(api, "orch_parked_long_polls", 0)


async def drain(api: Api, key: str, n: int, *, loops: int = 4, batch: int = 100) -> float:
    """Lease and complete until `n` jobs are done; jobs per second."""
    done = 0
    t0 = time.perf_counter()

    async def loop(i: int) -> None:
        nonlocal done
        while done < n:
            jobs = await lease(api, key, f"drain-{i}", max_jobs=batch, wait_ms=200)
            if jobs:
                await complete(api, key, jobs)
                done += len(jobs)

    await asyncio.gather(*(loop(i) for i in range(loops)))
    return n / (time.perf_counter() - t0)


@needs_pgbouncer
async def test_jobs_wake_ups_and_fair_share_through_pgbouncer(bouncer: PgBouncer, database_url: str) -> None:
    # A safety poll of a minute: a parked request answered within seconds was woken by NOTIFY.
    env = {**bouncer_env(bouncer, database_url), "ORCH_SAFETY_POLL_SECONDS": "60"}
    async with serving(database_url, **env) as (_gw, api):
        light = await api.tenant("light", weight=1)
        heavy = await api.tenant("heavy", weight=3)
        worker = await api.worker_key()

        # submit -> wake-up -> lease -> complete, the lease parked before the submit.
        waiting = asyncio.create_task(lease(api, light, "w-light", wait_ms=30_000))
        await eventually(lambda: parked(api), timeout=10)
        t0 = time.monotonic()
        r = await api.signed(light, "POST", "/v1/jobs", {"payload": {"hello": "pgbouncer"}})
        assert r.status == 201, r.body
        job_id = r.body["id"]
        jobs = await asyncio.wait_for(waiting, 15)
        woken_after = time.monotonic() - t0
        assert [j["id"] for j in jobs] == [job_id]
        assert woken_after < 10, woken_after

        # An event long-poll, parked, then woken by the completion's notification.
        r = await api.signed(light, "GET", "/v1/events?limit=1000")
        assert r.status == 200, r.body
        before = await metric(api, "orch_event_waiters")
        done = asyncio.create_task(api.signed(light, "GET", f"/v1/events?after={r.body['next']}&wait_ms=30000"))
        await eventually(lambda: _above(api, "orch_event_waiters", before), timeout=10)
        t0 = time.monotonic()
        await complete(api, light, jobs)
        reply = await asyncio.wait_for(done, 15)
        event_after = time.monotonic() - t0
        assert reply.status == 200, reply.body
        assert [e["type"] for e in reply.body["events"]] == ["job.succeeded"], reply.body
        assert event_after < 10, event_after
        print(
            f"parked lease woken {woken_after * 1000:.1f} ms after the submit, event long-poll {event_after * 1000:.1f} ms after the completion"
        )

        # Fair share by weight, one shared worker key, every statement through the pooler.
        await submit_many(api, light, 600)
        await submit_many(api, heavy, 600)
        started: list[str] = []

        async def take(i: int) -> None:
            while len(started) < 400:
                got = await lease(api, worker, f"shared-{i}", wait_ms=200)
                started.extend(j["tenant_id"] for j in got)
                if got:
                    await complete(api, worker, got)

        await asyncio.gather(*(take(i) for i in range(4)))
        rows = await fetch(
            database_url,
            "SELECT tenant_id FROM events WHERE type = 'job.started' AND tenant_id IN ('light', 'heavy') "
            "ORDER BY id LIMIT 401",
        )
        counts = Counter(r["tenant_id"] for r in rows[1:])  # the first was the lone job above
        share = counts["heavy"] / sum(counts.values())
        print(f"shared worker: heavy (weight 3) {share:.3f} of {sum(counts.values())} leases (target 0.750)")
        assert abs(share - 0.75) <= 0.06, counts

    # It all went through PgBouncer: transactions counted for this database.
    name = urlsplit(database_url).path.lstrip("/")
    stats = [s for s in bouncer.admin("SHOW STATS") if s["database"] == name]
    assert stats and int(stats[0]["total_xact_count"]) > 1000, stats


@needs_pgbouncer
async def test_drain_through_pgbouncer_against_direct(bouncer: PgBouncer, database_url: str) -> None:
    n = 3000
    figures: dict[str, float] = {}
    runs = {
        "direct, statement cache on": {},
        "direct, statement cache off": {"ORCH_DB_STATEMENT_CACHE": "off"},
        "PgBouncer (transaction mode), statement cache off": bouncer_env(bouncer, database_url),
    }
    for i, (label, env) in enumerate(runs.items()):
        async with serving(database_url, **env) as (_gw, api):
            tenant = await api.tenant(f"t{i}")
            await submit_many(api, tenant, n)
            figures[label] = await drain(api, tenant, n)
        left = await fetch(
            database_url, "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND state <> 'succeeded'", f"t{i}"
        )
        assert left[0][0] == 0
    for label, rate in figures.items():
        print(f"drain of {n} jobs, {label}: {rate:,.0f} jobs/s")


@needs_pgbouncer
async def test_webhooks_across_replicas_through_pgbouncer(database_url: str) -> None:
    # Two replicas' pools share 4 server connections, so consecutive statements of one delivery
    # run on different server sessions, and each session serves both replicas: a lock held by a
    # session would be taken twice or released by nobody. The lease is a row, and every event
    # still arrives once and in order.
    bouncer = PgBouncer(database_url, pool_size=4)
    bouncer.start()
    env = {
        **bouncer_env(bouncer, database_url),
        **WEBHOOK_ENV,
        "ORCH_WEBHOOK_CONCURRENCY": "2",
        "ORCH_WEBHOOK_RETRY_BASE_MS": "200",
        "ORCH_WEBHOOK_RETRY_CAP_MS": "200",
        "ORCH_WEBHOOK_MAX_ATTEMPTS": "50",
        "ORCH_WEBHOOK_POLL_SECONDS": "0.5",
    }
    receiver = WebhookReceiver(fails=lambda n: n % 25 == 0)
    try:
        async with receiver.serving(), serving(database_url, **env) as (_a, a), serving(database_url, **env) as (_b, b):
            t0 = time.monotonic()
            per_replica = await deliver_across([a, b], database_url, receiver, rounds=3)
            took = time.monotonic() - t0
        name = urlsplit(database_url).path.lstrip("/")
        stats = [s for s in bouncer.admin("SHOW STATS") if s["database"] == name]
        assert stats and int(stats[0]["total_xact_count"]) > sum(per_replica), stats
    finally:
        bouncer.stop()
    print(f"{sum(per_replica):.0f} webhook deliveries through PgBouncer in {took:.1f} s, by replica: {per_replica}")
    assert all(per_replica), per_replica


def test_listen_url_and_statement_cache_settings() -> None:
    direct = "postgresql://orch@db:5432/orch"
    pooled = "postgresql://orch@pgbouncer:6432/orch"
    d = load_settings({"DATABASE_URL": pooled})
    assert (d.listen_url, d.db_statement_cache) == (None, True)
    s = load_settings({"DATABASE_URL": pooled, "ORCH_LISTEN_URL": direct, "ORCH_DB_STATEMENT_CACHE": "off"})
    assert (s.database_url, s.listen_url, s.db_statement_cache) == (pooled, direct, False)
