"""Latency phases: submit → handler start to idle parked workers, and the lease round trip."""

from __future__ import annotations

import asyncio
import time

from core.wire import AckComplete
from sdk import WorkerClient

from ._cpu import CpuMeter, per_job_ms
from ._infra import BenchError, start_agents, stop_agents, stop_agents_hard
from ._report import Result, summary_ms
from ._session import Session, check, log


def latency_figures(latencies_ms: list[float], submit_ms: list[float], n: int, submit_wall: float) -> Result:
    out = summary_ms(latencies_ms)
    submit = summary_ms(submit_ms)
    out.update(
        jobs=n,
        received=len(latencies_ms),
        rate_achieved=n / submit_wall if submit_wall else None,
        submit_p50_ms=submit["p50_ms"],
        submit_p99_ms=submit["p99_ms"],
    )
    return out


async def latency(s: Session, label: str) -> Result:
    """Submit→handler-start of jobs submitted one by one to idle workers parked on long-polls."""
    cfg = s.cfg
    n = max(1, round(cfg.rate * cfg.latency_seconds))
    log(f"latency ({label}): {cfg.latency_workers} idle worker process(es); {n:,} jobs at {cfg.rate:g}/s")
    await s.fresh_producers()
    agents = await start_agents(
        [s.agent(f"lat-{i}", "latency", concurrency=cfg.latency_concurrency) for i in range(cfg.latency_workers)]
    )
    timeout = cfg.latency_seconds + 4 * s.safety_poll() + 30
    try:
        s.watch(agents)
        for a in agents:
            a.go()
        # Warm-up: connections, prepared statements, every worker parked again afterwards.
        warm, _ = await s.paced(max(20, round(cfg.rate / 2)), cfg.rate, warm=True)
        await s.wait_done(warm, timeout)
        await asyncio.sleep(0.5)
        before = s.cpu.sample()
        t0 = time.perf_counter()
        ids, submit_ms = await s.paced(n, cfg.rate)
        submit_wall = time.perf_counter() - t0
        await s.wait_done(ids, timeout)
        after = s.cpu.sample()
    except BaseException:
        await stop_agents_hard(agents)
        raise
    reports = await stop_agents(agents)
    check(reports)
    out = latency_figures([ns / 1e6 for r in reports for ns in r.latencies_ns], submit_ms, n, submit_wall)
    out.update(
        workers=cfg.latency_workers,
        concurrency=cfg.latency_concurrency,
        cpu_cores=CpuMeter.cores(before, after),
        cpu_ms_per_job=per_job_ms(before, after, n),
    )
    if label == "poll":
        out["safety_poll_s"] = s.safety_poll()
    log(
        f"latency ({label}): p50 {out['p50_ms']:.2f} ms, p90 {out['p90_ms']:.2f} ms, "
        f"p99 {out['p99_ms']:.2f} ms, max {out['max_ms']:.2f} ms"
    )
    return out


async def lease_rtt(s: Session) -> Result:
    """Round trip of one lease (max_jobs=1, wait_ms=0) while ready jobs wait, one at a time."""
    n = s.cfg.leases
    warm = 20
    log(f"lease round trip: {n:,} sequential leases of one job")
    await s.fresh_producers()
    await s.submit_batches(n + warm)
    client = WorkerClient(s.url, worker_id="bench-rtt", api_key=s.worker_key)
    rtts: list[float] = []
    done: list[AckComplete] = []
    try:
        for i in range(n + warm):
            t0 = time.perf_counter()
            jobs = await client.lease(max_jobs=1, wait_ms=0)
            dt = (time.perf_counter() - t0) * 1000
            if not jobs:
                raise BenchError(f"lease {i} found no job")
            if i >= warm:
                rtts.append(dt)
            done += [AckComplete(id=j.id, lease_token=j.lease_token) for j in jobs]
        for start in range(0, len(done), 500):
            await client.ack(complete=done[start : start + 500])
    finally:
        await client.close()
    out = summary_ms(rtts)
    log(f"lease round trip: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms")
    return out
