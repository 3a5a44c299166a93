"""The logs as the running server and worker really write them: `orchestrator serve --workers 2`
and `orchestrator worker` as subprocesses, every line of their output parsed as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import db
from core import logfmt

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, eventually, fetch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HANDLERS = """
def boom(payload):
    raise ValueError("handler exploded on purpose")

handlers = {"": boom}
"""


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "no output at all"
    parsed = []
    for line in lines:
        assert "\x1b" not in line, f"ANSI escape in {line!r}"
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= obj.keys(), line
        assert "color_message" not in obj, line
        parsed.append(obj)
    return parsed


async def test_serve_writes_one_json_object_per_line_with_the_ids(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, workers=2, extra_args=["--log-format", "json"])
    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await api.tenant("logs-t")
            job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"secret": "do-not-log"}})).body
            leased = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w-logs", "wait_ms": 1000})
            assert leased.body["jobs"][0]["id"] == job["id"]
            stale = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": 999_999})
            assert stale.status == 409
            refused = await api.signed(key, "GET", "/v1/jobs", drop="X-Signature")
            assert refused.status == 401
            # Requests land on either process; enough of them reach both.
            for _ in range(20):
                await api.admin("GET", "/v1/admin/tenants")
        finally:
            await api.close()
    finally:
        output = gw.stop()
    lines = _json_lines(output)
    assert "do-not-log" not in output
    started = [line for line in lines if line["msg"].startswith("Started server process")]
    assert len(started) == 2, "both gateway processes log, as JSON"
    stale_lines = [line for line in lines if line["msg"] == "stale lease token refused"]
    assert stale_lines, output
    assert stale_lines[0]["request_id"] == stale.headers["x-request-id"]
    assert stale_lines[0]["tenant_id"] == "logs-t" and str(stale_lines[0]["job_id"]) == job["id"]
    access = {line["request_id"]: line for line in lines if line["logger"] == "orchestrator.access"}
    a409 = access[stale.headers["x-request-id"]]
    assert (a409["method"], a409["route"], a409["status"]) == ("POST", "/v1/jobs/{job_id}/complete", 409)
    assert a409["tenant_id"] == "logs-t" and a409["duration_ms"] >= 0
    a401 = access[refused.headers["x-request-id"]]
    assert (a401["route"], a401["status"]) == ("/v1/jobs", 401)
    lease_line = next(line for line in lines if line.get("route") == "/v1/workers/lease")
    assert lease_line["worker_id"] == "w-logs"


async def test_access_log_can_be_turned_off_and_text_format_is_not_json(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, extra_args=["--log-format", "text", "--no-access-log"])
    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            assert (await api.admin("GET", "/v1/admin/tenants")).status == 200
        finally:
            await api.close()
    finally:
        output = gw.stop()
    assert "listening on" in output and "Started server process" in output
    assert not any(line.startswith("{") for line in output.splitlines())
    assert "/v1/admin/tenants" not in output


async def test_a_database_outage_is_summarised_not_logged_per_request(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, extra_args=["--log-format", "json"])
    dbname = urlsplit(database_url).path.lstrip("/")
    admin_dsn = db.with_database(database_url, "postgres")

    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            await fetch(admin_dsn, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            await fetch(
                admin_dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
            statuses = [(await api.admin("GET", "/v1/admin/tenants")).status for _ in range(40)]
            assert set(statuses) == {503}, statuses
        finally:
            await fetch(admin_dsn, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
            await api.close()
    finally:
        output = gw.stop()
    lines = _json_lines(output)
    outage = [line for line in lines if line["msg"].startswith("database unreachable during")]
    assert 1 <= len(outage) <= logfmt.BURST, len(outage)
    assert not any("exc" in line for line in outage)


async def test_the_worker_logs_failures_with_their_traceback_and_dead_letters(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "boom_handlers.py").write_text(HANDLERS)
        try:
            await gw.wait_ready(timeout=60)
            api = Api(gw.url, ADMIN_TOKEN)
            try:
                key = await api.tenant("logs-w")
                job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "max_attempts": 2})).body
                env = {
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join([tmp, os.getcwd()]),
                    "ORCH_URL": gw.url,
                    "ORCH_API_KEY": key,
                    "ORCH_RETRY_BASE_MS": "1",
                }
                with tempfile.TemporaryFile() as out:
                    worker = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "gateway.cli",
                            "worker",
                            "boom_handlers:handlers",
                            "--log-format",
                            "json",
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                    try:

                        async def dead() -> bool:
                            r = await api.signed(key, "GET", f"/v1/jobs/{job['id']}")
                            return bool(r.body["state"] == "dead")

                        await eventually(dead, timeout=60, every=0.2)
                    finally:
                        worker.send_signal(signal.SIGTERM)
                        await asyncio.to_thread(worker.wait, 30)
                    out.seek(0)
                    output = out.read().decode()
            finally:
                await api.close()
        finally:
            gw.stop()
    lines = _json_lines(output)
    retried = [line for line in lines if line["level"] == "warning" and "will be retried" in line["msg"]]
    assert retried and "handler exploded on purpose" in retried[0]["exc"], output
    assert retried[0]["job_id"] == job["id"] and retried[0]["tenant_id"] == "logs-w"
    final = [line for line in lines if line["level"] == "error" and "ends dead" in line["msg"]]
    assert final and "ValueError" in final[0]["exc"], output
