"""`just bench`'s own run: its phases in order, on one session."""

from __future__ import annotations

from ._latency import latency, lease_rtt
from ._memory import parked_long_polls
from ._report import Result, ratios
from ._scale import seed
from ._session import Session
from ._soak import soak
from ._throughput import event_trigger_cost, throughput


async def run(s: Session) -> Result:
    cfg = s.cfg
    phases = set(cfg.phases)
    res = s.result
    await s.setup()
    scale = "scale" in phases
    empty: Result = {}
    if "latency" in phases or scale:
        notify = await latency(s, "notify")
        res.setdefault("latency", {})["notify"] = notify
        empty["latency"] = notify
    if "throughput" in phases or scale:
        empty["lease"] = await lease_rtt(s)
        tp = await throughput(s, "empty", profile=cfg.profile)
        res.setdefault("throughput", {})["empty"] = tp
        empty["submit_jobs_per_s"] = tp["submit_jobs_per_s"]
        empty["drain_jobs_per_s"] = tp["drain_jobs_per_s"]
    if "memory" in phases:
        res["memory"] = await parked_long_polls(s, cfg.parked_polls)
    if "trigger" in phases:
        res["event_trigger"] = await event_trigger_cost(s, res.get("throughput", {}).get("empty"))
    if "poll" in phases:
        await s.start_gateway(notifier=False)
        res.setdefault("latency", {})["poll"] = await latency(s, "poll")
        if scale:
            await s.start_gateway(notifier=True)
    if scale:
        seeded = await seed(s)
        loaded: Result = {"latency": await latency(s, "loaded"), "lease": await lease_rtt(s)}
        tp = await throughput(s, "loaded")
        res.setdefault("throughput", {})["loaded"] = tp
        loaded["submit_jobs_per_s"] = tp["submit_jobs_per_s"]
        loaded["drain_jobs_per_s"] = tp["drain_jobs_per_s"]
        res["scale"] = {"seed": seeded, "empty": empty, "loaded": loaded, "ratios": ratios(empty, loaded)}
    if "soak" in phases:
        # Last: its gateway keeps finished jobs and events for seconds only.
        res["soak"] = await soak(s)
    return res
