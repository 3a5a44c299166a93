"""Throughput phases: batch submit, then a drain by worker processes; optionally profiled."""

from __future__ import annotations

import asyncio
import time

from ._cpu import CpuMeter, RssMeter, per_job_ms
from ._infra import Agent, start_agents, stop_agents, stop_agents_hard
from ._profile import Recorder, hot_spots, top_inclusive
from ._protocol import AgentReport
from ._report import Result
from ._session import Session, check, log

OUR_PACKAGES = ("gateway/", "db/", "notifier/", "core/", "sdk/", "bench/")


async def throughput(s: Session, label: str, *, profile: bool = False, concurrency: int | None = None) -> Result:
    """Submit `cfg.jobs` in batches, then drain them; `concurrency` per runner overrides the config's."""
    cfg = s.cfg
    concurrency = concurrency or cfg.drain_concurrency
    log(
        f"throughput ({label}): submit {cfg.jobs:,} jobs in batches of {cfg.batch}, then drain with "
        f"{cfg.drain_workers} x {cfg.drain_runners} runner(s) of concurrency {concurrency}"
    )
    agents = await start_agents(
        [
            s.agent(f"drain-{i}", "drain", concurrency=concurrency, runners=cfg.drain_runners)
            for i in range(cfg.drain_workers)
        ]
    )
    recorders: dict[str, Recorder] = {}
    prof: Result = {}
    s.watch(agents)
    rss = RssMeter({k: v for k, v in s.cpu.groups.items() if k in ("gateway", "workers")})
    try:
        await s.fresh_producers()
        ids, submit_s = await s.submit_batches(cfg.jobs)
        log(f"throughput ({label}): submitted {len(ids):,} jobs in {submit_s:.2f} s")
        if not cfg.burst:
            # Steady state, as autoanalyze would leave it: fresh statistics, and the plans the
            # gateways cached while the table was small invalidated.
            await s.conn.execute("ANALYZE jobs", timeout=600)
        if profile:
            recorders = await _start_profiles(s, label, agents)
        before = s.cpu.sample()
        rss.start()
        t_go = time.time()
        for a in agents:
            a.go()
        span = await s.wait_done(ids, timeout=max(120.0, cfg.jobs / 100))
        after = s.cpu.sample()
        memory = await rss.stop()
        for name, r in recorders.items():
            prof[name] = await _finish_profile(r)
    except BaseException:
        await rss.stop()
        for r in recorders.values():
            await r.stop()
        await stop_agents_hard(agents)
        raise
    reports = await stop_agents(agents)
    check(reports)
    drain_s = span["last_finish"] - t_go
    out = drain_figures(reports)
    out.update(
        jobs=len(ids),
        batch=cfg.batch,
        submitters=cfg.submitters,
        submit_seconds=submit_s,
        submit_jobs_per_s=len(ids) / submit_s,
        drain_seconds=drain_s,
        drain_jobs_per_s=len(ids) / drain_s,
        analyzed_before_drain=not cfg.burst,
        worker_processes=cfg.drain_workers,
        runners=cfg.drain_runners,
        concurrency=concurrency,
        cpu_cores=CpuMeter.cores(before, after),
        cpu_ms_per_job=per_job_ms(before, after, len(ids)),
        rss_mb=memory,
    )
    if prof:
        s.result["profile"] = {
            "samples": prof.get("gateway", {}).get("samples", 0),
            **{k: v.get("self", []) for k, v in prof.items()},
            **{f"{k}_ours": v.get("ours", []) for k, v in prof.items()},
            "files": {k: v.get("file") for k, v in prof.items()},
        }
    log(
        f"throughput ({label}): submit {out['submit_jobs_per_s']:,.0f} jobs/s, drain {out['drain_jobs_per_s']:,.0f}"
        f" jobs/s (lease batch {out['lease_batch_mean']:.1f}, ack batch {out['ack_batch_mean']:.1f})"
    )
    return out


def drain_figures(reports: list[AgentReport]) -> Result:
    lease_calls = sum(r.lease_calls for r in reports)
    nonempty = sum(r.lease_nonempty for r in reports)
    leased = sum(r.leased for r in reports)
    singles = sum(r.complete_calls + r.fail_calls for r in reports)
    acks = sum(r.ack_calls for r in reports)
    on_lease = sum(r.acks_on_lease for r in reports)
    acked = sum(r.acked for r in reports)
    reports_sent = singles + acks + on_lease
    if on_lease:
        mode = f"acknowledged on the next lease ({on_lease} leases) and in /v1/workers/ack batches ({acks})"
    elif acks and singles:
        mode = "acknowledged by /v1/workers/ack batches and single complete/fail calls"
    elif acks:
        mode = "acknowledged in /v1/workers/ack batches"
    else:
        mode = "acknowledged one job per complete call"
    return {
        "handled": sum(r.handled for r in reports),
        "lease_calls": lease_calls,
        "lease_empty": lease_calls - nonempty,
        "lease_batch_mean": leased / nonempty if nonempty else 0.0,
        "lease_max": max((r.lease_max for r in reports), default=0),
        "ack_calls": reports_sent,
        "acks_on_lease": on_lease,
        "ack_batch_mean": (singles + acked) / reports_sent if reports_sent else 0.0,
        "ack_mode": mode,
        "heartbeats": sum(r.heartbeat_calls for r in reports),
    }


async def _start_profiles(s: Session, label: str, agents: list[Agent]) -> dict[str, Recorder]:
    assert s.gateway is not None
    s.results_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Recorder] = {}
    for name, pid in (("gateway", s.gateway.pid), ("worker", agents[0].pid)):
        path = s.results_dir / f"{s.stamp}-{label}-{name}.pyspy.txt"
        try:
            out[name] = Recorder(pid, path)
        except FileNotFoundError as exc:
            log(f"no profile: {exc}")
            break
    if out:
        await asyncio.sleep(1.0)  # py-spy attaches before the drain starts
    return out


async def _finish_profile(recorder: Recorder) -> Result:
    text = await recorder.stop()
    if not recorder.output.exists():
        log(f"py-spy wrote no profile: {text.strip()[-500:]}")
        return {}
    samples, top = hot_spots(recorder.output)
    return {
        "samples": samples,
        "self": top,
        "ours": top_inclusive(recorder.output, OUR_PACKAGES),
        "file": str(recorder.output),
    }


async def event_trigger_cost(s: Session, with_trigger: Result | None) -> Result:
    """Drain again with the events table's NOTIFY trigger off: what the outbox's wake-ups cost."""
    await s.conn.execute("ALTER TABLE events DISABLE TRIGGER events_notify")
    try:
        without = await throughput(s, "no_event_trigger")
    finally:
        await s.conn.execute("ALTER TABLE events ENABLE TRIGGER events_notify")
    out: Result = {"drain_jobs_per_s_without": without["drain_jobs_per_s"]}
    if with_trigger is not None:
        out["drain_jobs_per_s_with"] = with_trigger["drain_jobs_per_s"]
        out["with_over_without"] = with_trigger["drain_jobs_per_s"] / without["drain_jobs_per_s"]
        log(
            f"event trigger: drain {out['drain_jobs_per_s_with']:.0f} jobs/s with, "
            f"{without['drain_jobs_per_s']:.0f} without"
        )
    return out
