"""Metrics across `serve --workers N` processes: each writes a snapshot of its own figures to
the shared folder, and a scrape of any of them merges all."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ..runtime import Runtime
from ..telemetry import merge

SNAPSHOT_SECONDS = 1.0


def render_metrics(rt: Runtime) -> bytes:
    """This process's metrics, or with several processes behind one port, all of theirs."""
    own = rt.metrics.render()
    if rt.settings.metrics_dir is None:
        return own
    folder = Path(rt.settings.metrics_dir)
    merge.write_snapshot(folder, own)
    return merge.merge(merge.read_snapshots(folder)).encode()


async def run_metrics_snapshots(rt: Runtime) -> None:
    if rt.settings.metrics_dir is None:
        raise ValueError("metrics snapshots need ORCH_METRICS_DIR")
    folder = Path(rt.settings.metrics_dir)
    try:
        while True:
            merge.write_snapshot(folder, rt.metrics.render())
            await asyncio.sleep(SNAPSHOT_SECONDS)
    finally:
        (folder / f"{os.getpid()}.prom").unlink(missing_ok=True)
