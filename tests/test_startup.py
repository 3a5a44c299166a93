"""Start-up problems are one line naming the problem and the fix, with exit code 2 — never a
traceback; and the operations routes give away nothing they should not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)


def _serve(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://postgres@127.0.0.1:1/orch", ("cannot connect", "127.0.0.1:1", "DATABASE_URL")),
        ("postgresql://[::1/x", ("DATABASE_URL",)),
        ("mysql://localhost/x", ("DATABASE_URL",)),
    ],
    ids=["nothing-listening", "malformed", "not-postgres"],
)
def test_an_unusable_database_url_is_one_line(url: str, words: tuple[str, ...]) -> None:
    _one_line(_serve({"DATABASE_URL": url}), *words)


def test_a_missing_database_is_one_line_naming_it(database_url: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database_url)
    missing = urlunsplit((parts.scheme, parts.netloc, "/orch_no_such_db", parts.query, ""))
    _one_line(_serve({"DATABASE_URL": missing}), "orch_no_such_db", "does not exist")


def test_a_port_in_use_is_refused_before_saying_it_listens(database_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "ORCH_ADMIN_TOKEN": ADMIN_TOKEN, "DATABASE_URL": database_url}
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    _one_line(done, f"127.0.0.1:{port}", "--port")
    assert "listening on" not in done.stdout


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    _one_line(_serve({"ORCH_POOL_MAX": "twenty"}), "ORCH_POOL_MAX")
    _one_line(_serve({"ORCH_LOG_FORMAT": "xml"}), "ORCH_LOG_FORMAT")


async def test_metrics_token_guards_metrics_and_the_admin_token_is_not_printed_when_given(
    database_url: str,
) -> None:
    env = {**os.environ, "ORCH_METRICS_TOKEN": "scrape-secret"}
    gw = GatewayProcess(database_url, ADMIN_TOKEN, env=env)
    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            refused = await api._send("GET", "/metrics", b"", {})
            assert refused.status == 401 and refused.headers["content-type"].startswith("application/problem+json")
            wrong = await api._send("GET", "/metrics", b"", {"Authorization": "Bearer nope"})
            assert wrong.status == 401
            ok = await api._send("GET", "/metrics", b"", {"Authorization": "Bearer scrape-secret"})
            assert ok.status == 200 and b"orch_parked_long_polls" in ok.raw
            assert (await api._send("GET", "/readyz", b"", {})).status == 200
        finally:
            await api.close()
    finally:
        output = gw.stop()
    assert ADMIN_TOKEN not in output and "scrape-secret" not in output


async def test_readiness_checks_are_shared_by_concurrent_callers(api: Api, gateway: object) -> None:
    import asyncio

    from .support import fetchval

    rt = gateway.runtime  # type: ignore[attr-defined]
    dsn = rt.settings.database_url
    before = await fetchval(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orchestrator'")
    replies = await asyncio.gather(*[api.admin("GET", "/readyz") for _ in range(200)])
    assert {r.status for r in replies} == {200}
    after = await fetchval(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orchestrator'")
    # 200 concurrent checks shared a handful of database round trips, so the pool did not grow for them.
    assert after <= max(before, rt.settings.pool_min) + 2, (before, after)
