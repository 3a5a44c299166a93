"""The SDK's types as a user's mypy --strict sees them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """
from typing import Any

from sdk import ProducerClient, SyncProducerClient, WorkerClient, WorkerRunner, current_job
from sdk.testing import FakeJob, run_handler


async def handler(payload: dict[str, Any]) -> str:
    return "ok"


async def use(p: ProducerClient, s: SyncProducerClient, w: WorkerClient) -> None:
    reveal_type(await p.submit({}))  # submit
    reveal_type(await p.submit_many([]))  # submit_many
    reveal_type(await p.wait("1"))  # wait
    reveal_type(await p.list())  # list
    reveal_type(s.submit({}))  # sync submit
    reveal_type(s.cancel("1"))  # sync cancel
    reveal_type(await w.lease())  # lease
    reveal_type(await w.heartbeat("1", 1))  # heartbeat
    reveal_type(await w.ack())  # ack
    runner = WorkerRunner(w, handler)
    reveal_type(runner.handler("k")(handler))  # decorated
    reveal_type(current_job())  # current_job
    outcome = run_handler(handler, FakeJob({}))
    reveal_type(outcome)  # outcome
    reveal_type(outcome.status)  # status
    await p.submit("not a payload")  # error: payload
    WorkerRunner(w, handler, concurrency="many")  # error: concurrency
"""

EXPECTED = {
    "submit": "core.wire.Job",
    "submit_many": "list[core.wire.Job]",
    "wait": "core.wire.Job",
    "list": "core.wire.JobList",
    "sync submit": "core.wire.Job",
    "sync cancel": "core.wire.Job",
    "lease": "list[core.wire.LeasedJob]",
    "heartbeat": "core.wire.HeartbeatResponse",
    "ack": "core.wire.AckResponse",
    "decorated": "def (payload: dict[str, Any]) -> typing.Coroutine[Any, Any, str]",
    "current_job": "core.wire.Job",
    "outcome": "sdk._outcome.Outcome",
    "status": "Literal['completed'] | Literal['retried'] | Literal['snoozed'] | Literal['cancelled'] | Literal['failed']",
}


def _mypy(*paths: Path, cache: Path) -> tuple[str, int]:
    out, err, status = mypy_api.run(
        [*map(str, paths), "--strict", "--no-error-summary", "--hide-error-context", "--cache-dir", str(cache)]
    )
    assert not err, err
    return out, status


@pytest.mark.timeout(180)
def test_revealed_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # mypy finds `sdk` and `core` from the repository root
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out, status = _mypy(snippet, cache=tmp_path / "cache")
    lines = SNIPPET.splitlines()
    revealed: dict[str, str] = {}
    errors: dict[str, str] = {}
    for match in re.finditer(r"^.*?:(\d+): (note|error): (.*)$", out, re.MULTILINE):
        line, severity, message = int(match[1]), match[2], match[3]
        label = lines[line - 1].rsplit("# ", 1)[-1]
        if severity == "note" and message.startswith("Revealed type is "):
            revealed[label] = message.removeprefix("Revealed type is ").strip('"')
        elif severity == "error":
            errors[label] = message
    assert revealed == EXPECTED, out
    assert set(errors) == {"error: payload", "error: concurrency"}, out
    assert status == 1


@pytest.mark.timeout(180)
def test_the_typed_example_passes_strict_mypy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out, status = _mypy(ROOT / "examples" / "typed_usage.py", ROOT / "sdk", cache=tmp_path / "cache")
    assert status == 0, out
