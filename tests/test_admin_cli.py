"""The operator's command line (`orchestrator tenants|jobs|dead|queues|schedules|workers`), each
command a real `python -m gateway.cli` process against a real gateway: its tables, its JSON,
its one-line errors and exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, (self.code, self.out, self.err)
        return msgspec.json.decode(self.out)


async def orch(url: str, *args: str, token: str | None = ADMIN_TOKEN, env: dict[str, str] | None = None) -> Run:
    child = {k: v for k, v in os.environ.items() if k not in ("ORCH_URL", "ORCH_ADMIN_TOKEN", "ORCH_DATA_DIR")}
    if token is not None:
        child["ORCH_ADMIN_TOKEN"] = token
    child.update(env or {})
    # Asynchronous, so the gateway in this test's loop answers while the command waits.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        *(["--url", url] if url else []),
        env=child,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def refused(run: Run, code: int = 1) -> str:
    """The one line a failed command prints, after checking its exit code."""
    assert run.code == code, (run.code, run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert run.out == "", run.out
    return lines[-1]


def ok(run: Run) -> str:
    assert run.code == 0, (run.code, run.out, run.err)
    assert run.err == "", run.err
    return run.out


async def test_tenants_and_keys(gateway: InProcessGateway, api: Api) -> None:
    url = gateway.url
    out = ok(await orch(url, "tenants", "create", "acme", "--weight", "2", "--name", "Acme Inc"))
    assert "Acme Inc" in out and "api key (shown once): tk" in out
    first_key = out.split("api key (shown once): ", 1)[1].split()[0]
    assert (await api.signed(first_key, "GET", "/v1/jobs")).status == 200

    listed = (await orch(url, "tenants", "list", "--json")).json()["tenants"]
    assert [(t["id"], t["weight"], t["name"]) for t in listed] == [("acme", 2, "Acme Inc")]
    table = ok(await orch(url, "tenants", "list"))
    header, *rows = [line for line in table.splitlines() if line.strip() and not set(line.strip()) <= {"─", " "}]
    assert header.split()[:3] == ["id", "name", "weight"] and rows[0].split()[0] == "acme"

    t = (await orch(url, "tenants", "update", "acme", "--weight", "3", "--max-inflight", "5", "--json")).json()
    assert (t["weight"], t["max_inflight"]) == (3, 5)
    t = (await orch(url, "tenants", "update", "acme", "--max-inflight", "none", "--json")).json()
    assert t["max_inflight"] is None and t["weight"] == 3
    assert (await orch(url, "tenants", "disable", "acme", "--json")).json()["disabled"] is True
    assert (await api.signed(first_key, "GET", "/v1/jobs")).status == 403
    assert (await orch(url, "tenants", "update", "acme", "--enabled", "--json")).json()["disabled"] is False

    out = ok(await orch(url, "tenants", "create-key", "acme"))
    second_key = out.split("api key (shown once): ", 1)[1].strip()
    keys = ok(await orch(url, "tenants", "keys", "acme"))
    first_id, second_id = first_key.split(".")[0], second_key.split(".")[0]
    assert first_id in keys and second_id in keys
    assert first_key.split(".", 1)[1] not in keys
    assert ok(await orch(url, "tenants", "revoke-key", first_key)).strip() == f"revoked {first_id}"
    assert (await api.signed(first_key, "GET", "/v1/jobs")).status == 401
    listed_keys = {
        k["key_id"]: k["revoked"] for k in (await orch(url, "tenants", "keys", "acme", "--json")).json()["keys"]
    }
    assert listed_keys == {first_id: True, second_id: False}

    line = refused(await orch(url, "tenants", "create", "acme"))
    assert line == "orchestrator: 409 Conflict: tenant acme exists", line
    line = refused(await orch(url, "tenants", "update", "acme"), code=2)
    assert "nothing to change" in line
    assert "404 Not found: no tenant ghost" in refused(await orch(url, "tenants", "keys", "ghost"))
    assert "422 Invalid field: weight" in refused(await orch(url, "tenants", "update", "acme", "--weight", "0"))
    usage = await orch(url, "tenants", "create")  # argparse's usage, then its one-line error
    assert usage.code == 2 and usage.err.splitlines()[-1].startswith("orchestrator tenants create: error:")


def ids(table: str) -> list[str]:
    """The first column of a table's rows that start with a job id."""
    return [line.split()[0] for line in table.splitlines() if line.split() and line.split()[0].isdigit()]


async def _submit(api: Api, key: str, **fields: Any) -> dict[str, Any]:
    r = await api.signed(key, "POST", "/v1/jobs", {"payload": {}, **fields})
    assert r.status == 201, r.body
    job: dict[str, Any] = r.body
    return job


async def _lease(api: Api, key: str, worker_id: str, queues: list[str] | None = None) -> dict[str, Any]:
    body = {"worker_id": worker_id, "wait_ms": 0, "queues": queues or ["default"]}
    r = await api.signed(key, "POST", "/v1/workers/lease", body)
    assert r.status == 200 and len(r.body["jobs"]) == 1, r.body
    job: dict[str, Any] = r.body["jobs"][0]
    return job


async def test_jobs_and_the_dead_letter_queue(gateway: InProcessGateway, api: Api) -> None:
    url = gateway.url
    a, b = await api.tenant("a"), await api.tenant("b")
    first = await _submit(api, a, kind="email")
    second = await _submit(api, b, queue="mail")
    third = await _submit(api, a, kind="report")

    assert ids(ok(await orch(url, "jobs", "list"))) == [third["id"], second["id"], first["id"]]
    page = ok(await orch(url, "jobs", "list", "--tenant", "a", "--limit", "1"))
    assert ids(page) == [third["id"]] and f"more: --after {third['id']}" in page
    page = ok(await orch(url, "jobs", "list", "--tenant", "a", "--limit", "1", "--after", third["id"]))
    assert ids(page) == [first["id"]] and "more:" not in page
    found = (await orch(url, "jobs", "list", "--kind", "report", "--json")).json()
    assert [j["id"] for j in found["jobs"]] == [third["id"]] and found["next"] is None
    assert "no jobs" in ok(await orch(url, "jobs", "list", "--state", "running"))

    leased = await _lease(api, a, "worker-9")
    out = ok(await orch(url, "jobs", "get", leased["id"]))
    assert "worker-9" in out and "job.created" in out and "job.started" in out

    cancelled = (await orch(url, "jobs", "cancel", third["id"], "--json")).json()
    assert cancelled["state"] == "cancelled"
    assert "409 Conflict: a cancelled job cannot be cancelled" in refused(
        await orch(url, "jobs", "cancel", third["id"])
    )
    assert "ready" in ok(await orch(url, "jobs", "retry", third["id"]))
    assert "404 Not found" in refused(await orch(url, "jobs", "get", "987654"))

    # a dead job: listed with its error, then replayed
    fail = {"lease_token": leased["lease_token"], "error": "smtp said no", "retryable": False}
    assert (await api.signed(a, "POST", f"/v1/jobs/{leased['id']}/fail", fail)).status == 200
    dead = ok(await orch(url, "dead", "list"))
    assert ids(dead) == [leased["id"]] and "smtp said no" in dead
    assert "no dead jobs" in ok(await orch(url, "dead", "list", "--tenant", "b"))
    assert ok(await orch(url, "dead", "replay", "--tenant", "a")).strip() == "replayed 1"
    assert (await orch(url, "dead", "list", "--json")).json()["jobs"] == []

    leased = await _lease(api, b, "w", queues=["mail"])
    fail = {"lease_token": leased["lease_token"], "error": "x", "retryable": False}
    assert (await api.signed(b, "POST", f"/v1/jobs/{leased['id']}/fail", fail)).status == 200
    replayed = (await orch(url, "dead", "replay", "--tenant", "b", "--id", leased["id"], "--json")).json()
    assert replayed == {"replayed": 1}


async def test_queues_schedules_and_workers(gateway: InProcessGateway, api: Api) -> None:
    url = gateway.url
    a = await api.tenant("a")
    await _submit(api, a, queue="mail")
    await _submit(api, a, queue="mail")

    out = ok(await orch(url, "queues", "pause", "a", "mail"))
    assert out.strip() == "a/mail: paused"
    queues = (await orch(url, "queues", "list", "--json")).json()["queues"]
    assert [(q["queue"], q["paused"], q["ready"]) for q in queues] == [("mail", True, 2)]
    assert "yes" in ok(await orch(url, "queues", "list", "--tenant", "a"))  # paused, in the table
    assert ok(await orch(url, "queues", "resume", "a", "mail")).strip() == "a/mail: running"
    assert "404 Not found: no tenant ghost" in refused(await orch(url, "queues", "pause", "ghost", "mail"))

    assert "no schedules" in ok(await orch(url, "schedules", "list"))
    r = await api.signed(a, "POST", "/v1/schedules", {"name": "hourly", "cron": "0 * * * *"})
    assert r.status == 201, r.body
    out = ok(await orch(url, "schedules", "list"))
    assert "hourly" in out and "0 * * * *" in out
    assert (await orch(url, "schedules", "list", "--tenant", "a", "--json")).json()["schedules"][0]["name"] == "hourly"

    assert "no worker holds a lease" in ok(await orch(url, "workers", "list"))
    await _lease(api, a, "box-1", queues=["mail"])
    (worker,) = (await orch(url, "workers", "list", "--json")).json()["workers"]
    assert worker["worker_id"] == "box-1" and worker["leases"] == 1 and worker["tenants"] == ["a"]


async def test_tokens_urls_and_unreachable_servers(gateway: InProcessGateway, api: Api, tmp_path: Path) -> None:
    url = gateway.url
    await api.tenant("a")
    line = refused(await orch(url, "tenants", "list", token="not-the-token"))
    assert line.startswith("orchestrator: 401 Unauthenticated"), line
    assert "no admin token" in refused(await orch(url, "tenants", "list", token=None), code=2)

    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    run = await orch(url, "tenants", "list", "--json", "--token-file", str(token_file), token="wrong")
    assert [t["id"] for t in run.json()["tenants"]] == ["a"]  # the file wins over the environment
    # ORCH_URL stands in for --url
    assert [
        t["id"] for t in (await orch("", "tenants", "list", "--json", env={"ORCH_URL": url})).json()["tenants"]
    ] == ["a"]

    closed = f"http://127.0.0.1:{free_port()}"
    line = refused(await orch(closed, "workers", "list"), code=3)
    assert line.startswith(f"orchestrator: cannot reach {closed}"), line
    assert "--url must be" in refused(await orch("ftp://example", "workers", "list"), code=2)
