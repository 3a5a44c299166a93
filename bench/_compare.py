"""`--compare pgqueuer`: pgqueuer and the orchestrator measured alternately in one run.

Each round runs both systems, one after the other (the order alternates between rounds), each on
a fresh database of the same PostgreSQL server, with the same jobs, worker processes, batch sizes
and latency protocol; the figures are the medians over the rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from ._config import Config
from ._infra import PgServer
from ._latency import latency
from ._pgqueuer import PgqSession, pgqueuer_version
from ._report import Result, median_of, table
from ._session import Session, log
from ._throughput import throughput

SYSTEMS = ("pgqueuer", "orchestrator")
# (pgqueuer batch_size, orchestrator concurrency per WorkerRunner): lease batch 20, then large batches.
SMALL = (20, 20)
LARGE = (50, 100)

# figure, label, better when higher, target ratio (orchestrator / pgqueuer)
FIGURES: tuple[tuple[str, str, bool, float], ...] = (
    ("drain_small_jobs_per_s", "drain, lease batch 20 (jobs/s)", True, 1.0),
    ("drain_large_jobs_per_s", "drain, large batches (jobs/s)", True, 1.0),
    ("latency_p50_ms", "submit → handler start p50 (ms)", False, 1.0),
    ("latency_p99_ms", "submit → handler start p99 (ms)", False, 1.0),
    ("enqueue_jobs_per_s", "batch enqueue, 1,000 per call (jobs/s)", True, 0.5),
)


def compare_config(cfg: Config) -> Config:
    """The protocol: 2 worker processes, one gateway process, one tenant, 1,000 jobs per enqueue."""
    return msgspec.structs.replace(
        cfg,
        gateway_workers=1,
        tenants=1,
        batch=1000,
        drain_workers=2,
        drain_runners=1,
        latency_workers=2,
        latency_concurrency=SMALL[1],
        rate=100.0,
    )


def _figures(lat: Result, small: Result, large: Result) -> Result:
    def peak(group: str) -> float | None:
        values = [mb for d in (small, large) for mb in d.get("rss_mb", {}).get(group, [])]
        return max(values) if values else None

    return {
        "drain_small_jobs_per_s": small["drain_jobs_per_s"],
        "drain_large_jobs_per_s": large["drain_jobs_per_s"],
        "latency_p50_ms": lat["p50_ms"],
        "latency_p99_ms": lat["p99_ms"],
        "enqueue_jobs_per_s": (small["jobs"] + large["jobs"]) / (small["submit_seconds"] + large["submit_seconds"]),
        "worker_rss_mb": peak("workers"),
        "gateway_rss_mb": peak("gateway"),
        "cpu_ms_per_job_small": small.get("cpu_ms_per_job"),
        "cpu_ms_per_job_large": large.get("cpu_ms_per_job"),
        "detail": {"latency": lat, "drain_small": small, "drain_large": large},
    }


async def _orchestrator(server: PgServer, cfg: Config, results_dir: Path, stamp: str) -> Result:
    s = Session(cfg, server.database(), results_dir, stamp)
    try:
        await s.setup()
        lat = await latency(s, "compare")
        small = await throughput(s, "compare_small", concurrency=SMALL[1])
        large = await throughput(s, "compare_large", concurrency=LARGE[1])
    finally:
        await s.teardown()
    out = _figures(lat, small, large)
    out["postgres"] = s.result.get("postgres")
    return out


async def _pgqueuer(server: PgServer, cfg: Config) -> Result:
    s = PgqSession(cfg, server.database("pgq_bench"))
    try:
        await s.setup()
        lat = await s.latency(SMALL[0])
        small = await s.throughput("batch_size 20", SMALL[0])
        large = await s.throughput("batch_size 50", LARGE[0])
    finally:
        await s.teardown()
    return _figures(lat, small, large)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


def summarise(runs: dict[str, list[Result]]) -> Result:
    """Medians per system over the rounds, and each figure's ratio orchestrator / pgqueuer."""
    medians = {system: median_of(runs[system]) for system in SYSTEMS}
    ratios: Result = {}
    for key, _, higher, bound in FIGURES:
        r = _ratio(medians["orchestrator"].get(key), medians["pgqueuer"].get(key))
        ratios[key] = {
            "ratio": r,
            "better": "higher" if higher else "lower",
            "target": bound,
            "met": None if r is None else (r >= bound if higher else r <= bound),
        }
    return {"medians": medians, "ratios": ratios}


async def compare(server: PgServer, base: Config, rounds: int, results_dir: Path, stamp: str) -> Result:
    cfg = compare_config(base)
    runs: dict[str, list[Result]] = {system: [] for system in SYSTEMS}
    for r in range(rounds):
        order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            log(f"compare: round {r + 1} of {rounds}, {system}")
            if system == "pgqueuer":
                runs[system].append(await _pgqueuer(server, cfg))
            else:
                runs[system].append(await _orchestrator(server, cfg, results_dir, stamp))
    out: Result = {
        "against": "pgqueuer",
        "pgqueuer_version": pgqueuer_version(),
        "rounds": rounds,
        "protocol": {
            "jobs": cfg.jobs,
            "worker_processes": cfg.drain_workers,
            "gateway_processes": cfg.gateway_workers,
            "tenants": cfg.tenants,
            "small": {"pgqueuer_batch_size": SMALL[0], "orchestrator_concurrency": SMALL[1]},
            "large": {"pgqueuer_batch_size": LARGE[0], "orchestrator_concurrency": LARGE[1]},
            "latency": {
                "rate": cfg.rate,
                "seconds": cfg.latency_seconds,
                "workers": cfg.latency_workers,
                "batch": SMALL[0],
            },
            "enqueue_batch": cfg.batch,
            "submitters": cfg.submitters,
        },
        "runs": runs,
    }
    out.update(summarise(runs))
    out["postgres"] = runs["orchestrator"][0].get("postgres") if runs["orchestrator"] else None
    return out


def _num(value: Any, digits: int = 2) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _mb(values: Any) -> str:
    return "-" if not isinstance(values, int | float) else f"{values:.0f} MB"


def render_compare(c: Result) -> str:
    med = c.get("medians", {})
    pgq, orch = med.get("pgqueuer", {}), med.get("orchestrator", {})
    p = c.get("protocol", {})
    rounds = c.get("rounds", 1)
    out = [
        "",
        f"against pgqueuer {c.get('pgqueuer_version')} (same run, {rounds} round{'s' if rounds != 1 else ''}, "
        f"{'median' if rounds != 1 else 'one run'} each): {_num(p.get('jobs'))} no-op jobs, "
        f"{p.get('worker_processes')} worker processes, {p.get('gateway_processes')} gateway process",
    ]
    rows = []
    for key, label, higher, bound in FIGURES:
        r = c.get("ratios", {}).get(key, {})
        ratio = r.get("ratio")
        rows.append(
            [
                label,
                _num(pgq.get(key)),
                _num(orch.get(key)),
                "-" if ratio is None else f"{ratio:.2f}x",
                "higher" if higher else "lower",
                ("≥ " if higher else "≤ ") + f"{bound:.1f}x",
                {True: "yes", False: "NO"}.get(r.get("met"), "-"),
            ]
        )
    rows.append(["worker process RSS, peak (drain)", _mb(pgq.get("worker_rss_mb")), _mb(orch.get("worker_rss_mb"))])
    rows[-1] += ["", "", "", ""]
    rows.append(["gateway process RSS, peak (drain)", "", _mb(orch.get("gateway_rss_mb")), "", "", "", ""])
    out.append(table(["", "pgqueuer", "orchestrator", "orch / pgq", "better", "target", "met"], rows))
    for key, label in (("cpu_ms_per_job_small", "drain, lease batch 20"), ("cpu_ms_per_job_large", "drain, large")):
        parts = []
        for system, figures in (("pgqueuer", pgq), ("orchestrator", orch)):
            per_job = figures.get(key) or {}
            named = [f"{k} {v:.3f}" for k, v in per_job.items() if k in ("postgres", "gateway", "workers")]
            if named:
                parts.append(f"{system}: " + ", ".join(named))
        if parts:
            out.append(f"    CPU ms per job ({label}): " + "; ".join(parts))
    return "\n".join(out)
