"""`just bench`'s own run: its phases in order, on one session."""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Coroutine
from typing import Any

from ._latency import latency, lease_rtt
from ._memory import parked_long_polls
from ._report import Result, ratios
from ._scale import seed, tenant_scale
from ._session import Session, log
from ._soak import soak
from ._throughput import event_trigger_cost, throughput
from ._ui import ui_pages


async def _kept(step: Coroutine[Any, Any, Result], name: str) -> Result:
    """A step after the long seeding: should it fail, the run's other figures are still reported."""
    try:
        return await step
    except Exception as exc:
        log(f"{name} failed:\n{traceback.format_exc()}")
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _drains(s: Session, label: str, n: int, *, profile: bool = False) -> Result:
    """`n` submit-and-drain runs; the first one's figures, with the medians of all of them."""
    first = await throughput(s, label, profile=profile)
    runs = [first] + [await throughput(s, f"{label}, drain {i + 1} of {n}") for i in range(1, n)]
    if n > 1:
        first["repeats"] = {key: [r[key] for r in runs] for key in ("submit_jobs_per_s", "drain_jobs_per_s")}
        first["median"] = {key: statistics.median(v) for key, v in first["repeats"].items()}
        log(
            f"throughput ({label}): medians of {n} runs: submit {first['median']['submit_jobs_per_s']:,.0f} jobs/s, "
            f"drain {first['median']['drain_jobs_per_s']:,.0f} jobs/s"
        )
    return first


def _rates(tp: Result) -> Result:
    return tp.get("median") or {key: tp[key] for key in ("submit_jobs_per_s", "drain_jobs_per_s")}


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
        tp = await _drains(s, "empty", cfg.scale_drains if scale else 1, profile=cfg.profile)
        res.setdefault("throughput", {})["empty"] = tp
        empty.update(_rates(tp))
    if "memory" in phases:
        res["memory"] = await parked_long_polls(s, cfg.parked_polls)
    if "trigger" in phases:
        res["event_trigger"] = await event_trigger_cost(s, res.get("throughput", {}).get("empty"))
    if "poll" in phases:
        await s.start_gateway(notifier=False)
        res.setdefault("latency", {})["poll"] = await latency(s, "poll")
        if scale:
            await s.start_gateway(notifier=True)
    seeded: Result | None = None
    if scale:
        seeded = await seed(s)
        loaded: Result = {"latency": await latency(s, "loaded"), "lease": await lease_rtt(s)}
        tp = await _drains(s, "loaded", cfg.scale_drains)
        res.setdefault("throughput", {})["loaded"] = tp
        loaded.update(_rates(tp))
        res["scale"] = {"seed": seeded, "empty": empty, "loaded": loaded, "ratios": ratios(empty, loaded)}
    if "ui" in phases:
        # On the scale phase's table when it ran (seeded once), before its many tenants arrive.
        own_seed = seeded is None
        seeded = seeded or await seed(s)
        res["ui"] = await _kept(ui_pages(s, seeded), "ui")
        if own_seed:
            res["ui"]["seed"] = seeded
    if scale:
        res["scale"]["tenants"] = await _kept(tenant_scale(s), "scale, tenants")
    if "soak" in phases:
        # Last: its gateway keeps finished jobs and events for seconds only.
        res["soak"] = await soak(s)
    return res
