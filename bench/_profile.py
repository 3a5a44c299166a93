"""Sampling profiles with py-spy (when it is installed): record raw stacks, rank the hot frames."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ._infra import CHILDREN

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Recorder:
    """`py-spy record` of one process and its children, until stopped."""

    def __init__(self, pid: int, output: Path, *, rate: int = 100) -> None:
        exe = py_spy()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed (uv pip install py-spy)")
        self.output = output
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        cmd = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--full-filenames"]
        cmd += ["--format", "raw"]
        cmd += ["--rate", str(rate), "--output", str(output)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        CHILDREN.add(self.proc)

    async def stop(self, timeout: float = 30.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        CHILDREN.forget(self.proc.pid)
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self._log.close()
        return text


def _short(frame: str) -> str | None:
    """`func (file:line)` → `file:func`, relative to the repository or site-packages; None for
    py-spy's process and thread pseudo-frames."""
    if frame.startswith(("process ", "thread ")):
        return None
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m.group("file")
    if path.startswith(_ROOT):
        path = path[len(_ROOT) :]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python" in path:
        path = "stdlib/" + path.rsplit("/", 1)[-1]
    return f"{path}:{m.group('func')}"


def hot_spots(raw: Path, top: int = 15) -> tuple[int, list[dict[str, Any]]]:
    """Total samples, and the `top` frames by self time, each with its self and inclusive share."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in (_short(x) for x in stack.split(";")) if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return 0, []
    return total, [
        {"frame": f, "self_pct": 100 * n / total, "total_pct": 100 * inclusive[f] / total}
        for f, n in own.most_common(top)
    ]


def top_inclusive(raw: Path, prefixes: tuple[str, ...], top: int = 25) -> list[dict[str, Any]]:
    """Frames of our own packages ranked by inclusive time: which of our functions hold the time."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = {f for f in (_short(x) for x in stack.split(";")) if f}
        total += n
        for f in frames:
            if f.startswith(prefixes):
                inclusive[f] += n
    return [{"frame": f, "total_pct": 100 * n / total} for f, n in inclusive.most_common(top)] if total else []
