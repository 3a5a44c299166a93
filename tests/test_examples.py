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
