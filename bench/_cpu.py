"""CPU time per component (gateway, PostgreSQL, workers, the bench itself) over a measured window.

Uses psutil when it is installed (it is a dev dependency); without it, nothing is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

Pids = Callable[[], list[int]]
Sample = tuple[float, dict[str, dict[int, float]], float | None]


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def postgres_pids(backend_pid: int) -> Pids | None:
    """The local PostgreSQL server's processes, found from one of its backends; None when the
    server is not on this machine."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        backend = psutil.Process(backend_pid)
        postmaster = backend.parent()
        if postmaster is None or "postgres" not in (postmaster.name() + " ".join(postmaster.cmdline())):
            return None
    except psutil.Error:
        return None
    root = postmaster.pid
    return lambda: _tree(root)


def tree(pid: int) -> Pids:
    return lambda: _tree(pid)


class CpuMeter:
    def __init__(self) -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            self.available = False
        else:
            self.available = True
        self.groups: dict[str, Pids] = {}

    def sample(self) -> Sample:
        if not self.available:
            return (time.monotonic(), {}, None)
        import psutil

        taken: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            times: dict[int, float] = {}
            for pid in pids():
                try:
                    t = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                times[pid] = t.user + t.system
            taken[name] = times
        total = psutil.cpu_times()
        busy = total.user + total.system + total.nice + getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0)
        return (time.monotonic(), taken, busy)

    @staticmethod
    def cores(before: Sample, after: Sample) -> dict[str, float]:
        """Average cores busy per component over the window, and for the whole machine."""
        wall = after[0] - before[0]
        if wall <= 0 or not after[1]:
            return {}
        out: dict[str, float] = {}
        for name, times in after[1].items():
            start = before[1].get(name, {})
            out[name] = sum(t - start.get(pid, 0.0) for pid, t in times.items()) / wall
        if before[2] is not None and after[2] is not None:
            out["machine"] = (after[2] - before[2]) / wall
            out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


def per_job_ms(before: Sample, after: Sample, jobs: int) -> dict[str, float]:
    """CPU milliseconds per job, per component, over the window."""
    wall = after[0] - before[0]
    if jobs <= 0:
        return {}
    return {k: v * wall * 1000 / jobs for k, v in CpuMeter.cores(before, after).items() if k != "machine"}


def own_pids() -> list[int]:
    return [os.getpid()]
