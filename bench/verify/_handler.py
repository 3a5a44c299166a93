"""The handler the checks' `orchestrator worker` processes run: it writes down every run (job
id and attempt) before it works, so that runs can be counted against attempts, also across
`kill -9` (each line is one write(2) on a file opened for appending)."""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

from sdk import current_job

RUNS_FILE_ENV = "VERIFY_RUNS_FILE"

_path = os.environ.get(RUNS_FILE_ENV)
_runs: IO[str] | None = open(_path, "a", buffering=1) if _path else None  # noqa: SIM115 (open while the process lives)


async def handle(payload: dict[str, Any]) -> dict[str, Any]:
    job = current_job()
    if _runs is not None:
        _runs.write(f"{job.id} {job.attempts}\n")
    ms = payload.get("ms", 0)
    if isinstance(ms, int | float) and ms > 0:
        await asyncio.sleep(ms / 1000)
    return {"attempt": job.attempts}


def read_runs(path: str) -> list[tuple[str, int]]:
    """The (job id, attempt) of every run written to `path`."""
    out: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            job_id, _, attempt = line.strip().partition(" ")
            if attempt:
                out.append((job_id, int(attempt)))
    return out
