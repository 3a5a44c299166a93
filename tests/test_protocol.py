"""docs/protocol.md as a product: its curl/openssl example runs against a real gateway, and the
Node client written from it interoperates with the Python SDK in both directions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import pytest

from core import JobState, signing
from sdk import JobSubmit, ProducerClient, WorkerClient, WorkerRunner

from .support import Api, eventually

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
NODE_DIR = ROOT / "examples" / "node"
VECTORS = NODE_DIR / "vectors.json"
CURL_EXAMPLE_MARKER = "# example: signed-curl"

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not installed, so the Node client example cannot run (Debian: apt-get install nodejs)"
)


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(extra)
    return env


def _example(marker: str) -> str:
    """The fenced ```sh block of docs/protocol.md whose first line is `marker`."""
    blocks: list[str] = re.findall(r"^```sh\n(.*?)^```$", PROTOCOL_MD.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if b.startswith(marker + "\n")]
    assert len(found) == 1, f"expected one ```sh block starting with {marker!r} in {PROTOCOL_MD.name}"
    return found[0]


async def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- signing ---------------------------------------------------------------------------------


def test_the_shared_signing_vectors_are_what_core_signing_computes() -> None:
    vectors = json.loads(VECTORS.read_text())
    key_id, secret = signing.split_api_key(vectors["api_key"])
    assert key_id == vectors["key_id"]
    assert len(vectors["cases"]) >= 3
    for case in vectors["cases"]:
        body = case["body"].encode()
        args = (case["method"], case["path"], case["timestamp"], case["nonce"], body)
        assert signing.string_to_sign(*args).decode() == case["string_to_sign"], case["name"]
        assert signing.signature(secret, *args) == case["signature"], case["name"]
        assert signing.verify(secret, case["signature"], *args)


@needs_node
@pytest.mark.timeout(60)
def test_the_node_clients_own_tests_pass() -> None:
    assert NODE is not None
    # No path argument: `node --test` finds *.test.mjs in its working directory on every Node
    # version (from Node 21 on, arguments are globs rather than folders).
    proc = subprocess.run(
        [NODE, "--test"], cwd=NODE_DIR, env=_child_env(), capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = re.search(r"^# pass (\d+)$", proc.stdout, flags=re.M)
    assert passed is not None and int(passed.group(1)) >= 5, proc.stdout
    assert re.search(r"^# fail 0$", proc.stdout, flags=re.M), proc.stdout


# --- the curl and openssl example ------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="the documented shell example needs curl and openssl (Debian: apt-get install curl openssl)",
)
@pytest.mark.timeout(60)
async def test_the_documented_curl_and_openssl_example_signs_requests_the_gateway_accepts(api: Api) -> None:
    key = await api.tenant("curl")
    script = _example(CURL_EXAMPLE_MARKER)
    env = _child_env(ORCH_URL=api.url, ORCH_API_KEY=key)

    rc, out, err = await _run(["bash", "-eu", "-c", script], env)
    assert rc == 0, err
    submitted, listed = (json.loads(line) for line in out.splitlines())
    assert submitted["state"] == JobState.READY
    assert (submitted["payload"], submitted["idempotency_key"]) == ({"name": "world"}, "greeting-1")
    assert [j["id"] for j in listed["jobs"]] == [submitted["id"]]

    # Again: fresh nonces are accepted, and the idempotency key returns the same job.
    rc, out, err = await _run(["bash", "-eu", "-c", script], env)
    assert rc == 0, err
    assert json.loads(out.splitlines()[0])["id"] == submitted["id"]
    everything = await api.signed(key, "GET", "/v1/jobs")
    assert [j["id"] for j in everything.body["jobs"]] == [submitted["id"]]

    # The gateway does check what the script computes: a wrong secret is refused.
    key_id = key.partition(".")[0]
    rc, out, err = await _run(["bash", "-eu", "-c", script], {**env, "ORCH_API_KEY": f"{key_id}.wrong-secret"})
    assert rc == 0, err
    refused = json.loads(out.splitlines()[0])
    assert (refused["status"], refused["detail"]) == (401, "the signature does not match the request")


# --- Node worker and producer against a real gateway -----------------------------------------


class NodeProcess:
    """A Node CLI of examples/node as a child process, its output in a file (a full pipe nobody
    reads would block it)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.proc = proc
        self._log = log

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def stop(self, deadline: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited by the deadline; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), deadline)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def node_worker(url: str, key: str, *args: str) -> AsyncIterator[NodeProcess]:
    assert NODE is not None
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(NODE_DIR / "worker.mjs"),
            *args,
            cwd=ROOT,
            env=_child_env(ORCH_URL=url, ORCH_API_KEY=key),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = NodeProcess(proc, log)
        try:
            yield worker
        finally:
            await worker.stop()


@needs_node
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_node_worker_runs_jobs_submitted_from_python(api: Api) -> None:
    key = await api.tenant("node-worker")
    args = ("--queues", "node", "--concurrency", "4", "--lease-seconds", "2", "--wait-ms", "30000")
    async with node_worker(api.url, key, *args) as worker, ProducerClient(api.url, api_key=key) as producer:
        greets = await producer.submit_many(
            [JobSubmit(payload={"name": f"n{i}"}, queue="node", kind="greet") for i in range(20)]
        )
        # Outlives its 2 s lease three times over: only heartbeats keep it.
        long = await producer.submit({"ms": 6000}, queue="node", kind="sleep")
        refused = await producer.submit({"error": "nope", "retryable": False}, queue="node", kind="fail")
        # Its hard timeout stops the heartbeats from renewing the lease: the reaper takes it back
        # and ends it, and the worker's next heartbeat is a 409.
        timed_out = await producer.submit({"ms": 20000}, queue="node", kind="sleep", timeout_seconds=1, max_attempts=1)

        done = {j.id: await producer.wait(j.id, timeout_s=30) for j in greets}
        for job in greets:
            assert done[job.id].state is JobState.SUCCEEDED, worker.output()
            assert done[job.id].result == {"greeting": f"hello {job.payload['name']}"}

        ended = await producer.wait(refused.id, timeout_s=30)
        assert (ended.state, ended.last_error, ended.attempts) == (JobState.DEAD, "nope", 1)

        ended = await producer.wait(timed_out.id, timeout_s=30)
        assert (ended.state, ended.last_error) == (JobState.DEAD, "lease expired"), worker.output()

        async def dropped() -> bool:
            return f"job {timed_out.id} lease lost (409): dropped" in worker.output()

        await eventually(dropped, timeout=10)

        ended = await producer.wait(long.id, timeout_s=30)
        assert (ended.state, ended.result, ended.attempts) == (JobState.SUCCEEDED, {"slept_ms": 6000}, 1)

        # Parked in a 30 s long-poll: SIGTERM must end it at once, and the worker exit cleanly.
        started = asyncio.get_running_loop().time()
        assert await worker.stop() == 0, worker.output()
        assert asyncio.get_running_loop().time() - started < 10
        assert "stopped" in worker.output()


@needs_node
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_python_worker_runs_jobs_submitted_from_node(api: Api) -> None:
    key = await api.tenant("node-producer")

    async def double(payload: dict[str, Any]) -> dict[str, Any]:
        return {"doubled": payload["n"] * 2}

    client = WorkerClient(api.url, worker_id="py-1", api_key=key, queues=("py",))
    runner = WorkerRunner(client, double, concurrency=4, wait_ms=5000)
    task = asyncio.create_task(runner.run())
    try:
        assert NODE is not None
        payloads = [json.dumps({"n": n}) for n in (1, 2, 3)]
        rc, out, err = await _run(
            [NODE, str(NODE_DIR / "producer.mjs"), "--queue", "py", "--kind", "double", "--wait", *payloads],
            _child_env(ORCH_URL=api.url, ORCH_API_KEY=key),
            timeout=60,
        )
        assert rc == 0, err
        jobs = [json.loads(line) for line in out.splitlines()]
        assert [(j["state"], j["queue"], j["kind"]) for j in jobs] == [("succeeded", "py", "double")] * 3
        assert [j["result"] for j in jobs] == [{"doubled": 2}, {"doubled": 4}, {"doubled": 6}]
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
        await client.close()


@needs_node
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_node_worker_with_a_rejected_key_gives_up_instead_of_retrying(api: Api) -> None:
    await api.tenant("node-bad-key")
    async with node_worker(api.url, "tk_nosuchkey.secret", "--wait-ms", "1000") as worker:
        code = await asyncio.wait_for(worker.proc.wait(), 20)
        assert code == 1, worker.output()
        assert "giving up: HTTP 401: unknown key" in worker.output()
