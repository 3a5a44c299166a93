"""`orchestrator worker` as a real process: where its key comes from, and its two signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from core import JobState
from sdk import JobSubmit, ProducerClient

from .support import Api, InProcessGateway, eventually

ROOT = Path(__file__).resolve().parent.parent
ORCHESTRATOR_WORKER = ("gateway.cli", "worker")
# `orchestrator-worker`, the same command installed with the SDK alone: it starts faster.
ORCHESTRATOR_WORKER_ALONE = ("sdk.cli",)

# Handlers the test controls from outside the process: a gate opens when its file appears.
HANDLERS = """
import asyncio
from pathlib import Path

from sdk import current_job


async def gate(payload):
    path = Path(payload["open_when"])
    while not path.exists():
        await asyncio.sleep(0.01)
    return "passed"


async def hello(payload):
    return f"hello from {current_job().kind!r}"


handlers = {"gate": gate, "": hello}
"""


class Worker:
    """`orchestrator worker` run from `folder`, its output collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def said(self, text: str) -> bool:
        return text in self.output

    async def exit_code(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code


@contextlib.asynccontextmanager
async def worker(
    folder: Path, *args: str, env: Mapping[str, str] | None = None, command: tuple[str, ...] = ORCHESTRATOR_WORKER
) -> AsyncIterator[Worker]:
    base = {k: v for k, v in os.environ.items() if k not in ("ORCH_URL", "ORCH_API_KEY")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *command,
        *args,
        cwd=folder,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    w = Worker(proc)
    try:
        yield w
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        w._reader.cancel()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "cli_handlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.mark.timeout(90)
async def test_a_second_sigterm_abandons_what_the_first_let_run(
    api: Api, gateway: InProcessGateway, folder: Path
) -> None:
    key = await api.tenant("cli")
    async with ProducerClient(api.url, api_key=key) as producer:
        finishing, stuck = await producer.submit_many(
            [JobSubmit(payload={"open_when": str(folder / name)}, kind="gate") for name in ("a", "never")]
        )
        args = ("cli_handlers:handlers", "--url", api.url, "--concurrency", "3", "--lease-seconds", "6")
        async with worker(folder, *args, env={"ORCH_API_KEY": key}) as w:

            async def both_running() -> bool:
                assert w.proc.returncode is None, w.output
                jobs = [await producer.get(j.id) for j in (finishing, stuck)]
                return all(j.state is JobState.RUNNING for j in jobs)

            await eventually(both_running, timeout=30)
            w.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: w.said("SIGTERM: stopping"))

            async def lease_dropped() -> bool:
                return not gateway.runtime.notifier.lease_waiters

            await eventually(lease_dropped)
            # Leasing has stopped: a job submitted now waits, though a slot is free.
            unleased = await producer.submit({})

            # The first SIGTERM lets running jobs finish...
            (folder / "a").touch()

            async def finished() -> bool:
                return (await producer.get(finishing.id)).state is JobState.SUCCEEDED

            await eventually(finished, timeout=20)
            assert w.proc.returncode is None, w.output  # ...and waits for the one still running
            # The second abandons it at once: not reported, its lease left to expire.
            t0 = time.monotonic()
            w.proc.send_signal(signal.SIGTERM)
            code = await w.exit_code()
            assert time.monotonic() - t0 < 5, w.output
        assert code == 1, w.output
        assert "SIGTERM again: abandoning running jobs" in w.output
        left = await producer.get(stuck.id)
        assert (left.state, left.attempts, left.last_error) == (JobState.RUNNING, 1, None), left

        async def expired() -> bool:
            return (await producer.get(stuck.id)).state is not JobState.RUNNING

        await eventually(expired, timeout=20)  # taken back by the gateway's reaper, to run again
        again = await producer.get(stuck.id)
        assert again.state in (JobState.READY, JobState.SCHEDULED), again
        never = await producer.get(unleased.id)
        assert (never.state, never.attempts) == (JobState.READY, 0), never


async def run_one_job(api: Api, key: str, folder: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Start a worker, have it run one job of an unknown kind (the "" entry takes it), SIGTERM it;
    returns its output."""
    async with ProducerClient(api.url, api_key=key) as producer:
        job = await producer.submit({}, kind="unlisted")
        async with worker(folder, "cli_handlers:handlers", "--url", api.url, *args, env=env) as w:
            done = await producer.wait(job.id, timeout_s=30)
            assert (done.state, done.result) == (JobState.SUCCEEDED, "hello from 'unlisted'"), w.output
            w.proc.send_signal(signal.SIGTERM)
            assert await w.exit_code() == 0, w.output
    return w.output


@pytest.mark.timeout(90)
async def test_the_key_from_the_environment_or_a_file(api: Api, folder: Path) -> None:
    key = await api.tenant("cli")
    out = await run_one_job(api, key, folder, env={"ORCH_API_KEY": key})
    assert "--api-key" not in out

    (folder / "key").write_text(key + "\n")  # as `echo` would write it
    out = await run_one_job(api, key, folder, "--api-key-file", str(folder / "key"))
    assert "--api-key shows the key" not in out

    # Still accepted on the command line, with a warning.
    out = await run_one_job(api, key, folder, "--api-key", key)
    assert "--api-key shows the key to every user of this machine" in out


@pytest.mark.timeout(60)
async def test_key_usage_errors(api: Api, folder: Path) -> None:
    (folder / "empty").write_text("\n")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([], {}, "no API key: set ORCH_API_KEY or pass --api-key-file"),
        (["--api-key-file", str(folder / "missing")], {}, "cannot read --api-key-file"),
        (["--api-key-file", str(folder / "empty")], {}, "is empty"),
        (["--api-key-file", str(folder / "empty"), "--api-key", "a.b"], {}, "not allowed with argument"),
    ]
    for args, env, message in cases:
        async with worker(
            folder, "cli_handlers:handlers", "--url", api.url, *args, env=env, command=ORCHESTRATOR_WORKER_ALONE
        ) as w:
            assert await w.exit_code() == 2, (args, w.output)
        assert message in w.output, (args, w.output)

    # A key from the environment that the gateway does not know is refused as such.
    bad_key = {"ORCH_API_KEY": "tk_nosuchkey.secret"}
    async with worker(
        folder, "cli_handlers:handlers", "--url", api.url, env=bad_key, command=ORCHESTRATOR_WORKER_ALONE
    ) as w:
        assert await w.exit_code() == 3, w.output
    assert "the gateway refused the key" in w.output
