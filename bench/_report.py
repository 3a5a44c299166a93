"""Figures: percentiles, the machine, targets, the printed table, the JSON file, medians of runs."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

Result = dict[str, Any]

# The targets, for a 2-core machine with everything local.
TARGET_P50_MS = 2.5
TARGET_P99_MS = 6.0
TARGET_DRAIN_JOBS_S = 12_000.0
TARGET_SCALE_DRIFT = 0.20
TARGET_UI_PAGE_MS = 100.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(values_ms: Sequence[float]) -> Result:
    return {
        "n": len(values_ms),
        "p50_ms": percentile(values_ms, 50),
        "p90_ms": percentile(values_ms, 90),
        "p95_ms": percentile(values_ms, 95),
        "p99_ms": percentile(values_ms, 99),
        "max_ms": max(values_ms) if values_ms else math.nan,
        "mean_ms": statistics.fmean(values_ms) if values_ms else math.nan,
    }


# --- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> Result:
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_modified_files": None if changed is None else len([c for c in changed.splitlines() if c.strip()]),
    }


# --- targets ------------------------------------------------------------------------------


def _get(result: Result, *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(result: Result) -> list[Result]:
    """Each target that this result measured: the figure, the bound, met or not."""
    out: list[Result] = []

    def add(name: str, value: Any, bound: float, at_most: bool) -> None:
        if isinstance(value, int | float) and not math.isnan(value):
            met = value <= bound if at_most else value >= bound
            out.append({"target": name, "value": value, "bound": bound, "at_most": at_most, "met": met})

    rate = _get(result, "config", "rate")
    add(f"submit→start p50 at {rate:g} jobs/s (ms)", _get(result, "latency", "notify", "p50_ms"), TARGET_P50_MS, True)
    add(f"submit→start p99 at {rate:g} jobs/s (ms)", _get(result, "latency", "notify", "p99_ms"), TARGET_P99_MS, True)
    add("drain (jobs/s)", _get(result, "throughput", "empty", "drain_jobs_per_s"), TARGET_DRAIN_JOBS_S, False)
    ratios = _get(result, "scale", "ratios") or {}
    for key, label, at_most in (
        ("lease_p50", "scale: lease round trip p50 (loaded/empty)", True),
        ("latency_p50", "scale: submit→start p50 (loaded/empty)", True),
        ("drain", "scale: drain jobs/s (loaded/empty)", False),
    ):
        bound = 1 + TARGET_SCALE_DRIFT if at_most else 1 - TARGET_SCALE_DRIFT
        add(label, ratios.get(key), bound, at_most)
    for name, step in (("scale: tenants sub-phase", _get(result, "scale", "tenants")), ("ui", result.get("ui"))):
        if isinstance(step, dict) and "error" in step:
            out.append({"target": f"{name} ran", "value": None, "bound": 1.0, "at_most": True, "met": False})
    tenants = _get(result, "scale", "tenants") or {}
    many, few = _get(tenants, "many", "tenants"), _get(tenants, "few", "tenants")
    if many and few:
        for key, label in (("pick_p50", "fair-share pick p50"), ("lease_p50", "lease round trip p50")):
            add(
                f"scale: {label} ({many:,} / {few:,} tenants)",
                _get(tenants, "ratios", key),
                1 + TARGET_SCALE_DRIFT,
                True,
            )
    for label, fig in (_get(result, "ui", "pages") or {}).items():
        name = f"ui: GET {label} p95 (ms)"
        if "error" in fig:
            out.append({"target": name, "value": None, "bound": TARGET_UI_PAGE_MS, "at_most": True, "met": False})
        add(name, _get(fig, "p95_ms"), TARGET_UI_PAGE_MS, True)
    return out


# --- printing -----------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _other(figures: Result | None) -> str:
    """Cores busy with work that is not the bench's (other processes on the machine)."""
    return _fmt(_get(figures or {}, "cpu_cores", "other"))


def _latency_row(label: str, lat: Result | None) -> list[str]:
    if not lat:
        return [label, *["-"] * 7]
    return [
        label,
        _fmt(lat.get("jobs")),
        _fmt(lat.get("p50_ms")),
        _fmt(lat.get("p90_ms")),
        _fmt(lat.get("p99_ms")),
        _fmt(lat.get("max_ms")),
        _fmt(lat.get("submit_p50_ms")),
        _other(lat),
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)


def _cpu_line(label: str, figures: Result | None) -> str | None:
    per_job = _get(figures or {}, "cpu_ms_per_job")
    if not per_job:
        return None
    parts = [
        f"{name} {ms:.2f}"
        for name, ms in per_job.items()
        if name in ("gateway", "postgres", "workers", "bench") and isinstance(ms, int | float)
    ]
    return f"    CPU ms per job ({label}): " + ", ".join(parts)


def render(result: Result) -> str:
    out: list[str] = []
    m = result.get("machine", {})
    pg = result.get("postgres", {})
    cfg = result.get("config", {})
    runs = result.get("runs")
    title = f"Job Orchestrator bench ({'quick' if cfg.get('quick') else 'full'}"
    title += f", median of {runs} run{'s' if runs != 1 else ''})" if runs else ")"
    out.append(title)
    out.append(
        f"machine: {m.get('cpu_count')} x {m.get('cpu_model')}, Python {m.get('python')}, "
        f"PostgreSQL {pg.get('version', '?')} ({result.get('database', '?')}), "
        f"{cfg.get('gateway_workers')} gateway process(es)"
    )
    load = m.get("load_average")
    if isinstance(load, list) and load:
        out.append(
            f"load average at start {load[0]:.2f}; 'other cores' below = cores busy outside the bench's "
            "processes while it measured (other work on the machine: noise)"
        )
    lat = result.get("latency", {})
    if lat:
        rate = cfg.get("rate")
        out.append("")
        out.append(f"latency: submit → handler start, {rate:g} jobs/s for {cfg.get('latency_seconds'):g} s")
        rows = [
            _latency_row("LISTEN/NOTIFY", lat.get("notify")),
            _latency_row(f"safety poll only ({lat.get('poll', {}).get('safety_poll_s', '?')} s)", lat.get("poll")),
        ]
        if "notify" in lat and "poll" in lat:
            rows.append(
                [
                    "poll / notify",
                    "",
                    *(
                        _fmt(_ratio(lat["poll"].get(k), lat["notify"].get(k)), 0) + "x"
                        for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                    ),
                    "",
                    "",
                ]
            )
        out.append(table(["", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms", "submit p50 ms", "other cores"], rows))
        line = _cpu_line("LISTEN/NOTIFY", lat.get("notify"))
        if line:
            out.append(line)
    tp = result.get("throughput", {})
    if tp:
        out.append("")
        out.append("throughput")
        rows = []
        for key, label in (
            ("empty", "empty table"),
            ("no_event_trigger", "events NOTIFY off"),
            ("loaded", "loaded table"),
        ):
            t = tp.get(key)
            if not t:
                continue
            rows.append(
                [
                    label,
                    _fmt(t.get("jobs")),
                    _fmt(t.get("submit_jobs_per_s"), 0),
                    _fmt(t.get("drain_jobs_per_s"), 0),
                    _fmt(t.get("lease_batch_mean"), 1),
                    _fmt(t.get("ack_batch_mean"), 1),
                    _other(t),
                ]
            )
        out.append(
            table(["", "jobs", "submit jobs/s", "drain jobs/s", "lease batch", "ack batch", "other cores"], rows)
        )
        e = tp.get("empty", {})
        if e:
            out.append(
                f"    submit: batches of {e.get('batch')} x {e.get('submitters')} concurrent; drain: "
                f"{e.get('worker_processes')} worker process(es) x {e.get('runners')} runner(s), "
                f"concurrency {e.get('concurrency')}; lease max_jobs = free slots (at most "
                f"{e.get('concurrency')}), largest lease seen {e.get('lease_max')}; "
                f"{e.get('ack_mode', '?')}; "
                + ("ANALYZE before each drain" if e.get("analyzed_before_drain") else "no ANALYZE before the drains")
            )
            line = _cpu_line("drain, empty table", e)
            if line:
                out.append(line)
    memory = _memory_lines(result)
    if memory:
        out.append("")
        out.extend(memory)
    trig = result.get("event_trigger", {})
    if trig.get("with_over_without") is not None:
        out.append(f"    events NOTIFY trigger: drain with it / without it = {trig['with_over_without']:.2f}")
    sc = result.get("scale", {})
    seed = sc.get("seed") or _get(result, "ui", "seed") or {}
    if seed:
        out.append("")
        out.extend(_seed_lines(seed))
    if sc:
        rows = []
        for key, label in (
            ("empty", "empty table"),
            ("no_event_trigger", "events NOTIFY off"),
            ("loaded", "loaded table"),
        ):
            s = sc.get(key)
            if not s:
                continue
            rows.append(
                [
                    label,
                    _fmt(_get(s, "lease", "p50_ms")),
                    _fmt(_get(s, "lease", "p99_ms")),
                    _fmt(_get(s, "latency", "p50_ms")),
                    _fmt(_get(s, "latency", "p99_ms")),
                    _fmt(_get(s, "submit_jobs_per_s"), 0),
                    _fmt(_get(s, "drain_jobs_per_s"), 0),
                ]
            )
        ratios = sc.get("ratios", {})
        if ratios:
            rows.append(
                [
                    "loaded / empty",
                    _fmt(ratios.get("lease_p50")),
                    _fmt(ratios.get("lease_p99")),
                    _fmt(ratios.get("latency_p50")),
                    _fmt(ratios.get("latency_p99")),
                    _fmt(ratios.get("submit")),
                    _fmt(ratios.get("drain")),
                ]
            )
        out.append(
            table(
                ["", "lease p50 ms", "lease p99 ms", "start p50 ms", "start p99 ms", "submit jobs/s", "drain jobs/s"],
                rows,
            )
        )
        repeats = _get(tp, "loaded", "repeats", "drain_jobs_per_s")
        if repeats:
            out.append(
                f"    submit and drain: medians of {len(repeats)} runs each; drain jobs/s, empty table "
                + ", ".join(_fmt(x, 0) for x in _get(tp, "empty", "repeats", "drain_jobs_per_s") or [])
                + "; loaded "
                + ", ".join(_fmt(x, 0) for x in repeats)
            )
        out.extend(_tenant_lines(sc.get("tenants")))
    out.extend(_ui_lines(result.get("ui")))
    tg = targets(result)
    if tg:
        out.append("")
        out.append("targets")
        out.append(
            table(
                ["", "measured", "target", "met"],
                [
                    [
                        t["target"],
                        _fmt(t["value"], 0 if t["bound"] >= 1000 else 2),
                        ("≤ " if t["at_most"] else "≥ ") + _fmt(t["bound"]),
                        "yes" if t["met"] else "NO",
                    ]
                    for t in tg
                ],
            )
        )
    so = result.get("soak")
    if so:
        from ._soak import soak_lines

        out.append("")
        out.extend(soak_lines(so))
    prof = result.get("profile")
    if prof:
        out.append("")
        out.append(f"profile (py-spy, {prof.get('samples', 0):,} samples): where the gateway's time goes")
        out.append(
            table(
                ["function", "self %", "total %"],
                [[h["frame"], _fmt(h["self_pct"], 1), _fmt(h["total_pct"], 1)] for h in prof.get("gateway", [])],
            )
        )
    return "\n".join(out)


def _seed_lines(seed: Result) -> list[str]:
    return [
        f"scale: {_fmt(seed.get('finished'))} finished ({_fmt(seed.get('dead'))} of them dead) + "
        f"{_fmt(seed.get('waiting'))} waiting jobs over {_fmt(seed.get('tenants'))} tenants, seeded in "
        f"{_fmt(seed.get('seconds'), 1)} s: INSERT {_fmt(seed.get('insert_seconds'), 1)} s "
        f"({_fmt(seed.get('insert_rows_per_s'), 0)} rows/s, {_fmt(seed.get('connections'))} connection(s)), "
        f"VACUUM ANALYZE + CHECKPOINT {_fmt(seed.get('vacuum_seconds'), 1)} s",
        f"    jobs table {_fmt(seed.get('table_mb'), 0)} MB (heap {_fmt(seed.get('heap_mb'), 0)} MB, "
        f"indexes {_fmt(seed.get('indexes_mb'), 0)} MB), {_fmt(seed.get('rows'))} rows",
    ]


def _tenant_lines(tenants: Result | None) -> list[str]:
    """The fair-share pick (timed on its own) and the lease round trip, few tenants against many."""
    if not tenants:
        return []
    if "error" in tenants:
        return ["", f"scale, tenants: failed ({tenants['error']})"]
    rows = []
    for key in ("few", "many"):
        r = tenants.get(key)
        if r:
            rows.append(
                [
                    f"{_fmt(r.get('tenants'))} tenants with work",
                    _fmt(_get(r, "pick", "p50_ms"), 3),
                    _fmt(_get(r, "pick", "p99_ms"), 3),
                    _fmt(_get(r, "pick_client", "p50_ms")),
                    _fmt(_get(r, "lease", "p50_ms")),
                    _fmt(_get(r, "lease", "p99_ms")),
                    _fmt(_get(r, "lease", "tenants_leased_from")),
                ]
            )
    ratios = tenants.get("ratios") or {}
    if ratios:
        rows.append(
            [
                "many / few",
                _fmt(ratios.get("pick_p50")),
                _fmt(ratios.get("pick_p99")),
                _fmt(ratios.get("pick_client_p50")),
                _fmt(ratios.get("lease_p50")),
                _fmt(ratios.get("lease_p99")),
                "",
            ]
        )
    return [
        "",
        f"scale, tenants: queue {tenants.get('queue')!r}, tenants and their ready jobs inserted in "
        f"{_fmt(tenants.get('seed_seconds'), 1)} s; pick = the gateway's fair-share statement alone, "
        "timed in the server (and its round trip from the bench); "
        "lease = POST /v1/workers/lease (max_jobs 1, wait_ms 0, shared key)",
        table(
            [
                "",
                "pick p50 ms",
                "pick p99 ms",
                "pick round trip p50 ms",
                "lease p50 ms",
                "lease p99 ms",
                "tenants leased",
            ],
            rows,
        ),
    ]


def _ui_lines(ui: Result | None) -> list[str]:
    if ui and "error" in ui:
        return ["", f"ui: failed ({ui['error']})"]
    if not ui or not ui.get("pages"):
        return []
    rows = [
        [label, *["-"] * 5, f"NO ({fig['status']})"]
        if "error" in fig
        else [
            label,
            _fmt(fig.get("n")),
            _fmt(fig.get("p50_ms"), 1),
            _fmt(fig.get("p95_ms"), 1),
            _fmt(fig.get("max_ms"), 1),
            _fmt(fig.get("kb"), 0),
            "yes" if isinstance(fig.get("p95_ms"), int | float) and fig["p95_ms"] <= TARGET_UI_PAGE_MS else "NO",
        ]
        for label, fig in ui["pages"].items()
    ]
    return [
        "",
        f"ui: console pages, signed in, one request at a time, on {_fmt(ui.get('rows'))} jobs "
        f"(target p95 ≤ {TARGET_UI_PAGE_MS:g} ms)",
        table(["page", "n", "p50 ms", "p95 ms", "max ms", "kB", "met"], rows),
    ]


def _mbs(values: Any) -> str:
    if not isinstance(values, list) or not values:
        return "-"
    return " + ".join(f"{v:.0f}" for v in values if isinstance(v, int | float)) + " MB"


def _memory_lines(result: Result) -> list[str]:
    """Resident memory per process: the gateway and the SDK workers under the drain, the gateway
    with the long-polls parked."""
    out: list[str] = []
    drain = _get(result, "throughput", "empty", "rss_mb") or {}
    mem = result.get("memory") or {}
    if drain or mem:
        out.append("memory: resident set size per process (peak while measured)")
    if drain:
        out.append(f"    gateway under the drain: {_mbs(drain.get('gateway'))}")
        out.append(f"    SDK worker processes under the drain: {_mbs(drain.get('workers'))}")
    if mem:
        out.append(
            f"    gateway with {_fmt(mem.get('long_polls'))} parked long-polls: {_mbs(mem.get('gateway_parked_rss_mb'))}"
            f" (idle {_mbs(mem.get('gateway_idle_rss_mb'))}; {_fmt(mem.get('kb_per_long_poll'), 1)} kB per long-poll)"
        )
    return out


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


def ratios(empty: Result, loaded: Result) -> Result:
    return {
        "lease_p50": _ratio(_get(loaded, "lease", "p50_ms"), _get(empty, "lease", "p50_ms")),
        "lease_p99": _ratio(_get(loaded, "lease", "p99_ms"), _get(empty, "lease", "p99_ms")),
        "latency_p50": _ratio(_get(loaded, "latency", "p50_ms"), _get(empty, "latency", "p50_ms")),
        "latency_p99": _ratio(_get(loaded, "latency", "p99_ms"), _get(empty, "latency", "p99_ms")),
        "submit": _ratio(loaded.get("submit_jobs_per_s"), empty.get("submit_jobs_per_s")),
        "drain": _ratio(loaded.get("drain_jobs_per_s"), empty.get("drain_jobs_per_s")),
    }


def ratios_of(a: Result, b: Result, keys: Sequence[str]) -> Result:
    """p50 and p99 of each figure of `a` over the same of `b`."""
    return {
        f"{key}_{q}": _ratio(_get(a, key, f"{q}_ms"), _get(b, key, f"{q}_ms")) for key in keys for q in ("p50", "p99")
    }


# --- files --------------------------------------------------------------------------------


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def save(result: Result, folder: Path, stamp: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(_finite(result)), indent=2) + b"\n")
    return path


def _finite(value: Any) -> Any:
    """NaN is not JSON: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def load(path: Path) -> Result:
    result: Result = msgspec.json.decode(path.read_bytes())
    return result


def median_of(results: list[Any]) -> Any:
    """The element-wise median of several results of the same shape: numbers are replaced by
    their median, other values by the first run's."""
    first = results[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for r in results if isinstance(r, dict) for k in r))
        return {k: median_of([r[k] for r in results if isinstance(r, dict) and k in r]) for k in keys}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    numbers = [float(r) for r in results if isinstance(r, int | float) and not isinstance(r, bool)]
    numbers = [n for n in numbers if not math.isnan(n)]
    if not numbers:
        return None
    med = statistics.median(numbers)
    return int(med) if isinstance(first, int) and med.is_integer() else med
