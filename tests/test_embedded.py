"""The embedded PostgreSQL after a crash: `serve` killed with SIGKILL leaves its server running;
the next `serve` adopts it and stops it on a clean exit, and `orchestrator reset` refuses while
the folder is in use and stops an orphan before deleting it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import db

from .support import GatewayProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ORCH_ADMIN_TOKEN")}
    env["ORCH_DATA_DIR"] = str(data_dir)
    return env


def _orchestrator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_killed_serve_leaves_a_server_the_next_one_adopts_and_stops(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _env(data)
    first = GatewayProcess(None, None, env=env)
    try:
        await first.wait_ready(timeout=90)
        postmaster = db.running_server_pid(data / "pg")
        assert postmaster is not None
        refused = _orchestrator(env, "reset")
        assert refused.returncode == 2 and "in use" in refused.stderr, refused
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        os.kill(first.proc.pid, signal.SIGKILL)  # the serve process alone, as a crash would
        await asyncio.to_thread(first.proc.wait, 10)
    finally:
        first.stop()
    assert db.running_server_pid(data / "pg") == postmaster  # orphaned, still running

    second = GatewayProcess(None, None, env=env)
    try:
        await second.wait_ready(timeout=90)
        assert db.running_server_pid(data / "pg") == postmaster  # adopted, not a second server
        second.kill(signal.SIGTERM)
        assert await asyncio.to_thread(second.proc.wait, 30) == 0
    finally:
        second.stop()
    await eventually(lambda: _gone(postmaster), timeout=30)


async def test_reset_stops_an_orphaned_server_then_deletes_the_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _env(data)
    gw = GatewayProcess(None, None, env=env)
    try:
        await gw.wait_ready(timeout=90)
        postmaster = db.running_server_pid(data / "pg")
        assert postmaster is not None
        os.kill(gw.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(gw.proc.wait, 10)
    finally:
        gw.stop()
    done = _orchestrator(env, "reset")
    assert done.returncode == 0, done
    assert "stopped the PostgreSQL server" in done.stdout
    assert not data.exists()
    await eventually(lambda: _gone(postmaster), timeout=30)
