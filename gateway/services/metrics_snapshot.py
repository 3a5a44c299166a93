"""Metrics across `serve --workers N` processes: each writes a snapshot of its own figures to
the shared folder, and a scrape of any of them merges all."""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path

from ..runtime import Runtime
from ..telemetry import merge
from ..telemetry.metrics import QUEUE_LABELS_FILE

SNAPSHOT_SECONDS = 1.0

# Runtimes whose figures are retired (the process is stopping): they write no snapshot any more,
# or their figures would count twice.
_retired: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _share(rt: Runtime, folder: Path) -> None:
    rt.metrics.queue_labels.share(folder / QUEUE_LABELS_FILE)


def render_metrics(rt: Runtime) -> bytes:
    """This process's metrics, or with several processes behind one port, all of theirs."""
    if rt.settings.metrics_dir is None:
        return rt.metrics.render()
    folder = Path(rt.settings.metrics_dir)
    _share(rt, folder)
    if rt not in _retired:
        merge.write_snapshot(folder, rt.metrics.render())
    return merge.merge(merge.read_snapshots(folder)).encode()


async def run_metrics_snapshots(rt: Runtime) -> None:
    if rt.settings.metrics_dir is None:
        raise ValueError("metrics snapshots need ORCH_METRICS_DIR")
    folder = Path(rt.settings.metrics_dir)
    _share(rt, folder)
    try:
        while True:
            merge.write_snapshot(folder, rt.metrics.render())
            await asyncio.sleep(SNAPSHOT_SECONDS)
    except asyncio.CancelledError:
        # Stopping (a crash is restarted and keeps its snapshot): the last figures stay counted.
        merge.write_snapshot(folder, rt.metrics.render())
        _retired.add(rt)
        merge.retire(folder, os.getpid())
        raise
