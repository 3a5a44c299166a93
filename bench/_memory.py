"""The memory phase: the gateway's resident memory while many long-polls are parked on it."""

from __future__ import annotations

import asyncio
import contextlib
import time

from sdk import WorkerClient

from ._cpu import rss_mb
from ._infra import BenchError
from ._report import Result
from ._session import Session, log

# aiohttp's connection limit per client session in the SDK: one long-poll per connection.
POLLS_PER_CLIENT = 100
PARK_TIMEOUT_S = 60.0


def _connections_to(port: int) -> int:
    import psutil

    return sum(
        1
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


async def _until_parked(s: Session, n: int) -> None:
    """Until the gateway holds `n` connections and has gone quiet (every lease tried and parked)."""
    assert s.gateway is not None
    port, group = s.gateway.port, s.cpu.groups["gateway"]
    deadline = time.monotonic() + PARK_TIMEOUT_S
    while _connections_to(port) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {_connections_to(port)} of {n} long-polls reached the gateway")
        await asyncio.sleep(0.1)
    while True:
        before = _cpu_seconds(group())
        await asyncio.sleep(0.5)
        if _cpu_seconds(group()) - before < 0.05:
            return
        if time.monotonic() > deadline:
            raise BenchError("the gateway did not go quiet with the long-polls parked")


async def parked_long_polls(s: Session, n: int) -> Result:
    """Gateway RSS per process before and while `n` leases wait on an empty queue."""
    if not s.cpu.available:
        log("memory: psutil is not installed; skipped")
        return {}
    log(f"memory: {n:,} long-polls parked on an empty queue")
    gateway = s.cpu.groups["gateway"]
    idle = rss_mb(gateway)
    clients = [
        WorkerClient(s.url, worker_id=f"parked-{i}", api_key=s.worker_key, queues=("parked",))
        for i in range(-(-n // POLLS_PER_CLIENT))
    ]
    polls = [
        asyncio.create_task(clients[i // POLLS_PER_CLIENT].lease(max_jobs=1, wait_ms=int(PARK_TIMEOUT_S * 1000)))
        for i in range(n)
    ]
    try:
        await _until_parked(s, n)
        parked = rss_mb(gateway)
    finally:
        for t in polls:
            t.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
    out: Result = {
        "long_polls": n,
        "gateway_idle_rss_mb": idle,
        "gateway_parked_rss_mb": parked,
        "kb_per_long_poll": (sum(parked) - sum(idle)) * 1000 / n,
    }
    log(
        f"memory: gateway RSS {' + '.join(f'{m:.0f}' for m in parked)} MB with {n:,} parked long-polls "
        f"({out['kb_per_long_poll']:.1f} kB each)"
    )
    return out
