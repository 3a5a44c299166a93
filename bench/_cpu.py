"""CPU time and memory per component (gateway, PostgreSQL, workers, the bench itself) over a
measured window.

Uses psutil when it is installed (it is a dev dependency); without it, nothing is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

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


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def rss_mb(pids: Pids) -> list[float]:
    """Resident memory of each process now, in MB, largest first."""
    psutil = _psutil()
    if psutil is None:
        return []
    out: list[float] = []
    for pid in pids():
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid).memory_info().rss / 1e6)
    return sorted(out, reverse=True)


class RssMeter:
    """The peak resident memory of each process of each group, sampled every `every` seconds
    between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Pids], every: float = 0.2) -> None:
        self.groups = groups
        self.every = every
        self._peak: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._task: asyncio.Task[None] | None = None
        self._psutil = _psutil()

    def sample(self) -> None:
        psutil = self._psutil
        if psutil is None:
            return
        for name, pids in self.groups.items():
            peak = self._peak[name]
            for pid in pids():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 1e6
                except psutil.Error:
                    continue
                peak[pid] = max(peak.get(pid, 0.0), rss)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        if self._psutil is not None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, list[float]]:
        """Per group, each process's peak RSS in MB, largest first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.sample()
        return {name: sorted(peak.values(), reverse=True) for name, peak in self._peak.items() if peak}
