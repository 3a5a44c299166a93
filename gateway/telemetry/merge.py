"""Merging the metrics of several gateway processes behind one port into one exposition.

With `serve --workers N` a scrape reaches one process at random. Each process therefore writes
its own exposition to a shared folder, and whichever process answers /metrics merges all of
them: counters and histograms are summed over processes; gauges read from the database (every
process reads the same rows) take the maximum; other gauges (parked long-polls, pool
connections) are summed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Gauges that report database state, identical in every process.
SHARED_GAUGE_PREFIX = "orch_db_"
_DROP_LABELS = frozenset({"service_instance_id"})


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted((k, v) for k, v in labels.items() if k not in _DROP_LABELS))


def merge(expositions: Iterable[str]) -> str:
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for fam in text_string_to_metric_families(text):
            families.setdefault(fam.name, (fam.type, fam.documentation))
            samples = values.setdefault(fam.name, {})
            take_max = fam.type in ("gauge", "info") and (
                fam.name.startswith(SHARED_GAUGE_PREFIX) or fam.name == "target_info"
            )
            for s in fam.samples:
                k = _key(s.name, s.labels)
                if k not in samples:
                    samples[k] = s.value
                elif take_max:
                    samples[k] = max(samples[k], s.value)
                else:
                    samples[k] += s.value
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


def write_snapshot(folder: Path, text: bytes) -> None:
    """Atomically replace this process's snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{os.getpid()}.tmp"
    tmp.write_bytes(text)
    tmp.replace(folder / f"{os.getpid()}.prom")


def read_snapshots(folder: Path) -> list[str]:
    """Snapshots of the live processes; a dead process's file is removed."""
    texts: list[str] = []
    for path in folder.glob("*.prom"):
        pid = int(path.stem) if path.stem.isdigit() else -1
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with contextlib.suppress(FileNotFoundError):
            texts.append(path.read_text())
    return texts


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
