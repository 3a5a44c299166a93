"""Merging the metrics of several gateway processes behind one port into one exposition.

With `serve --workers N` a scrape reaches one process at random. Each process therefore writes
its own exposition to a shared folder, and whichever process answers /metrics merges all of
them. Counters and histograms are summed over processes, and a process that exits leaves its
last figures in a `retired` file there, so the sums never go backwards when one dies and is
restarted. Gauges combine by a rule chosen per metric (`GAUGE_RULES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# How one gauge's values in several processes make the merged value. Gauges not named here:
# `orch_db_*` (the same rows, read by every process) take the maximum, the others are summed.
GAUGE_RULES: dict[str, str] = {
    "orch_listen_up": "min",  # 0 as soon as one process has lost its LISTEN connection
    "orch_parked_long_polls": "sum",
    "orch_event_waiters": "sum",
    "orch_pool_connections_in_use": "sum",
    "orch_pool_connections_idle": "sum",
    "orch_services_failing": "sum",  # failing services, counted in every process they fail in
    "orch_job_retention_lag_seconds": "max",  # the process holding the pruning lock; the others say 0
    "target_info": "max",
}
SHARED_GAUGE_PREFIX = "orch_db_"
_COMBINE: dict[str, Callable[[float, float], float]] = {"min": min, "max": max, "sum": lambda a, b: a + b}
# Families whose samples only grow during a process's life: what a dead process leaves behind.
MONOTONIC = frozenset({"counter", "histogram"})
# Not named *.prom: the snapshots are, one per live (or not yet retired) process, by pid.
RETIRED = "retired.txt"
_LOCK = ".lock"
_DROP_LABELS = frozenset({"service_instance_id"})


def gauge_rule(name: str) -> str:
    return GAUGE_RULES.get(name) or ("max" if name.startswith(SHARED_GAUGE_PREFIX) else "sum")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted((k, v) for k, v in labels.items() if k not in _DROP_LABELS))


def merge(expositions: Iterable[str], *, kinds: frozenset[str] | None = None) -> str:
    """One exposition of several; with `kinds`, of those metric types alone."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for fam in text_string_to_metric_families(text):
            if kinds is not None and fam.type not in kinds:
                continue
            families.setdefault(fam.name, (fam.type, fam.documentation))
            samples = values.setdefault(fam.name, {})
            combine = _COMBINE[gauge_rule(fam.name) if fam.type in ("gauge", "info") else "sum"]
            for s in fam.samples:
                k = _key(s.name, s.labels)
                samples[k] = s.value if k not in samples else combine(samples[k], s.value)
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        # The parser strips a counter's _total; the text format names it in full.
        shown = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {shown} {doc}")
        lines.append(f"# TYPE {shown} {kind}")
        for (sample, labels), value in values[name].items():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample}{{{label_text}}} {value!r}" if label_text else f"{sample} {value!r}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(folder: Path, mode: int) -> Iterator[None]:
    """Folding a snapshot into the retired figures excludes every reader, so a reader sees each
    process's figures exactly once: in its snapshot or among the retired."""
    with (folder / _LOCK).open("a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def snapshot_path(folder: Path, pid: int | None = None) -> Path:
    return folder / f"{os.getpid() if pid is None else pid}.prom"


def write_snapshot(folder: Path, text: bytes) -> None:
    """Atomically replace this process's snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{os.getpid()}.tmp"
    tmp.write_bytes(text)
    tmp.replace(snapshot_path(folder))


def retire(folder: Path, pid: int) -> None:
    """Add the counters and histograms of process `pid`'s last snapshot to the retired figures and
    remove the snapshot: once, whichever process gets there first."""
    path = snapshot_path(folder, pid)
    with _locked(folder, fcntl.LOCK_EX):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return  # retired already
        retired = folder / RETIRED
        before = retired.read_text() if retired.exists() else ""
        tmp = folder / f".{os.getpid()}.retired.tmp"
        tmp.write_text(merge([before, text], kinds=MONOTONIC))
        tmp.replace(retired)
        path.unlink()


def read_snapshots(folder: Path) -> list[str]:
    """The retired figures and the snapshot of every process; dead processes' are retired first."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.prom"):
        pid = int(path.stem) if path.stem.isdigit() else -1
        if pid > 0 and pid != os.getpid() and not _alive(pid):
            retire(folder, pid)
    texts: list[str] = []
    with _locked(folder, fcntl.LOCK_SH):
        for path in [folder / RETIRED, *folder.glob("*.prom")]:
            with contextlib.suppress(FileNotFoundError):
                texts.append(path.read_text())
    return texts


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
