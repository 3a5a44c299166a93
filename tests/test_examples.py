"""Every module in examples/ runs here, so the examples cannot rot."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core import JobState
from examples import typed_usage
from sdk import JobSubmit, ProducerClient

from .support import Api, eventually

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
async def test_typed_usage(api: Api) -> None:
    key = await api.tenant("typed")
    resized, refused, rendered = await asyncio.wait_for(typed_usage.main(api.url, key), 40)
    assert (resized.state, resized.result) == (JobState.SUCCEEDED, {"width": 640, "height": 320})
    assert (refused.state, refused.last_error) == (JobState.DEAD, "width must be positive")
    assert (rendered.state, rendered.result, rendered.attempts) == (JobState.SUCCEEDED, "page 3 (attempt 2)", 2)
    assert await asyncio.to_thread(typed_usage.submit_from_a_script, api.url, key) is JobState.CANCELLED
    resize, render = await asyncio.to_thread(typed_usage.check_handlers)
    assert (resize.status, resize.result) == ("completed", {"width": 8, "height": 4})
    assert (render.status, render.delay_ms) == ("retried", 10)


async def _worker_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("ORCH_URL", "ORCH_API_KEY")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


@pytest.mark.timeout(90)
async def test_worker_handlers_from_the_cli_and_a_graceful_sigterm(api: Api) -> None:
    key = await api.tenant("cli")
    proc = await _worker_process(
        "-m",
        "gateway.cli",
        "worker",
        "examples.worker_handlers:handlers",
        "--url",
        api.url,
        "--api-key",
        key,
        "--concurrency",
        "4",
        "--worker-id",
        "cli-1",
        "--lease-seconds",
        "5",
    )
    try:
        async with ProducerClient(api.url, api_key=key) as producer:
            jobs = await producer.submit_many(
                [
                    JobSubmit(payload={"name": "cli"}),
                    JobSubmit(payload={"data": "x", "rounds": 10}, kind="digest"),
                ]
            )
            done = [await producer.wait(j.id, timeout_s=30) for j in jobs]
            assert done[0].result == {"greeting": "hello cli"}
            assert done[1].state is JobState.SUCCEEDED
            assert str(done[1].result).startswith(f"{jobs[1].id}:")

            slow = await producer.submit({"seconds": 1.0}, kind="sleep")

            async def running() -> bool:
                return (await producer.get(slow.id)).state is JobState.RUNNING

            await eventually(running, timeout=20)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            text = out.decode(errors="replace")
            assert proc.returncode == 0, text
            # The job in progress was allowed to finish before the worker exited.
            assert (await producer.get(slow.id)).state is JobState.SUCCEEDED, text
            assert time.monotonic() - t0 < 10
            assert "SIGTERM: stopping" in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(60)
async def test_the_worker_cli_refuses_a_bad_key_clearly(api: Api) -> None:
    proc = await _worker_process(
        "-m", "sdk.cli", "examples.worker_handlers:greet", "--url", api.url, "--api-key", "tk_nosuchkey.secret"
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3
    assert "the gateway refused the key" in out.decode()

    proc = await _worker_process("-m", "sdk.cli", "examples.nosuchmodule:handler", "--url", api.url, "--api-key", "a.b")
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "cannot import 'examples.nosuchmodule'" in out.decode()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_demo_runs_to_its_summary(database_url: str) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--database-url", database_url, "--flood", "400", "--seconds", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: plain progress lines
    assert "stopped cleanly" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_demo_keeps_serving_so_a_dead_job_can_be_replayed_from_the_console(database_url: str) -> None:
    import re

    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.demo",
        "--database-url",
        database_url,
        "--flood",
        "400",
        "--seconds",
        "3",
        "--keep",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        console = token_path = None
        async with asyncio.timeout(120):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before keeping the server up:\n" + "".join(seen)
                seen.append(line)
                if m := re.search(r"console: (http://\S+)/ui \(sign in with the admin token in (.+)\)", line):
                    console, token_path = m.group(1), m.group(2)
                if "keep running" in line:
                    break
        assert console is not None and token_path is not None, "".join(seen)
        token = Path(token_path).read_text().strip()
        # unsafe: the console is on an IP address, whose cookies aiohttp would drop otherwise.
        async with aiohttp.ClientSession(base_url=console, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post("/ui/login", data={"token": token}, allow_redirects=False) as r:
                assert r.status == 303, await r.text()
            async with http.get("/ui/jobs", params={"state": "dead", "kind": "crash"}) as r:
                assert r.status == 200
                page = await r.text()
            ids = re.findall(r'href="/ui/jobs/(\d+)"', page)
            assert ids, "no dead crash job listed"
            job_url = f"/ui/jobs/{ids[0]}"
            async with http.get(job_url) as r:
                detail = await r.text()
            assert "this job always fails" in detail  # its last error, readable on the page
            csrf = re.search(r'name="csrf" value="([^"]+)"', detail)
            assert csrf is not None
            async with http.post(f"{job_url}/retry", data={"csrf": csrf.group(1)}, allow_redirects=False) as r:
                assert r.status == 303, await r.text()

            async def succeeded() -> bool:
                async with http.get(f"/v1/admin/jobs/{ids[0]}", headers={"Authorization": f"Bearer {token}"}) as r:
                    return bool((await r.json())["job"]["state"] == "succeeded")

            await eventually(succeeded, timeout=30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    out = "".join(seen) + rest.decode()
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out
