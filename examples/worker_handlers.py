"""Handlers to run from the shell:

    orchestrator worker examples.worker_handlers:handlers --url http://127.0.0.1:8000 \\
        --api-key "$ORCH_API_KEY" --concurrency 8

`handlers` maps job kinds to handlers (the empty kind is the default); `greet` alone would serve
every job with one handler (`examples.worker_handlers:greet`).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from sdk import Handler, current_job


async def greet(payload: dict[str, Any]) -> dict[str, str]:
    return {"greeting": f"hello {payload.get('name', 'world')}"}


async def sleep(payload: dict[str, Any]) -> float:
    """Takes `seconds` to finish: long enough to see a graceful shutdown wait for it."""
    seconds = float(payload.get("seconds", 1))
    await asyncio.sleep(seconds)
    return seconds


def digest(payload: dict[str, Any]) -> str:
    """CPU work in a plain function: the runner gives it a thread."""
    data = str(payload.get("data", "")).encode()
    for _ in range(int(payload.get("rounds", 1000))):
        data = hashlib.sha256(data).digest()
    return f"{current_job().id}:{data.hex()[:16]}"


handlers: dict[str, Handler] = {"": greet, "sleep": sleep, "digest": digest}
