"""What the bench and its worker processes say to each other.

A worker process (`python -m bench._agent` for the SDK, `python -m bench._pgq_agent` for
pgqueuer) gets an `AgentConfig` as JSON on its command line, prints `ready` once it is built,
starts on `go` (a line on stdin), and on `stop` (or end of input) stops, waits for running jobs
and prints one JSON `AgentReport` line. This module imports nothing of either system, so that
each worker process loads only what a user's worker would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str  # the gateway's URL; for a pgqueuer worker, the database's DSN
    api_key: str = ""
    mode: str  # "latency": record submit→start of jobs carrying their submit time; "drain": a no-op handler
    runners: int = 1
    # SDK: jobs in flight per WorkerRunner (its leases ask for the free slots); pgqueuer: batch_size
    concurrency: int = 100
    wait_ms: int = 30_000
    queues: tuple[str, ...] = ("default",)


class AgentReport(msgspec.Struct, kw_only=True):
    name: str
    handled: int = 0
    latencies_ns: list[int] = []
    starts_ns: list[int] = []  # when each job of latencies_ns started (wall clock)
    lease_calls: int = 0
    lease_nonempty: int = 0
    leased: int = 0
    lease_max: int = 0
    complete_calls: int = 0
    fail_calls: int = 0
    ack_calls: int = 0
    acks_on_lease: int = 0  # leases that carried outcomes
    acked: int = 0
    heartbeat_calls: int = 0
    errors: list[str] = []


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (it comes with uvicorn[standard]), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(line: bytes) -> None:
    # The event loop's pipes may have left stdout non-blocking, and a soak's report is megabytes.
    os.set_blocking(sys.stdout.fileno(), True)
    # Under PYTHONUNBUFFERED the buffer is the raw file, whose write to a pipe may be partial.
    data = memoryview(line + b"\n")
    while data:
        data = data[sys.stdout.buffer.write(data) or 0 :]
    sys.stdout.buffer.flush()


def agent_main(argv: list[str], run: Callable[[AgentConfig], Coroutine[Any, Any, AgentReport]]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = msgspec.json.decode(argv[1].encode(), type=AgentConfig)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        report = runner.run(run(config))
    say(msgspec.json.encode(report))
    return 0
