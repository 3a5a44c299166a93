"""The web console in a real browser: Debian's chromium driven by Playwright, against a real
gateway with a real worker. Every page is opened and screenshotted (into ORCH_UI_SCREENSHOTS when
set, else the test's own folder); a console error, an uncaught exception or a failed request of
any asset fails the test."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from core import Settings
from sdk import WorkerClient, WorkerRunner

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
        reason="Debian's chromium is not installed (apt-get install -y chromium)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the playwright Python package is not installed (a dev dependency: `uv sync` installs it)",
    ),
]


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The statistics the pages count with are read every 0.5 s here, not every 10 s.
    return Settings(
        database_url=database_url, admin_token=ADMIN_TOKEN, reap_interval_seconds=0.2, stats_interval_seconds=0.5
    )


def _screenshots(tmp_path: Path) -> Path:
    chosen = os.environ.get("ORCH_UI_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


async def _dead_job(api: Api, key: str) -> str:
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"n": 2}, "queue": "mail", "max_attempts": 1})).body
    lease = (
        await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "queues": ["mail"]})
    ).body
    r = await api.signed(
        key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": lease["jobs"][0]["lease_token"], "error": "boom"}
    )
    assert r.body["state"] == "dead", r.body
    job_id: str = job["id"]
    return job_id


@pytest.mark.timeout(240)
async def test_console_in_chromium(api: Api, gateway: InProcessGateway, tmp_path: Path) -> None:
    from playwright.async_api import ConsoleMessage, Page, Request, Response, async_playwright

    key = await api.tenant("acme", max_inflight=4)
    await api.tenant("beta", weight=3)
    dead = await _dead_job(api, key)
    # Something on every page: a lease held, a schedule, a consumer.
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": "slow"})
    held = await api.signed(
        key, "POST", "/v1/workers/lease", {"worker_id": "box-1", "wait_ms": 0, "queues": ["slow"], "lease_seconds": 300}
    )
    assert held.body["jobs"], held.body
    r = await api.signed(key, "POST", "/v1/schedules/", {"name": "nightly", "cron": "0 3 * * *", "queue": "mail"})
    assert r.status == 201, r.body
    r = await api.signed(key, "POST", "/v1/consumers", {"name": "audit", "start": "oldest"})
    assert r.status == 201, r.body
    shots = _screenshots(tmp_path)
    taken: list[str] = []
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text}")

    loaded: set[str] = set()

    def on_failed(req: Request) -> None:
        # A click that navigates aborts what the page still loads (the favicon, a refresh): not a
        # broken asset, which answers an error status or fails otherwise.
        if req.failure != "net::ERR_ABORTED":
            problems.append(f"request failed: {req.url} {req.failure}")

    def on_response(resp: Response) -> None:
        if resp.status >= 400:
            problems.append(f"HTTP {resp.status}: {resp.url}")
        elif "/ui/static/" in resp.url:
            loaded.add(resp.url.rsplit("/", 1)[-1])

    async def shot(page: Page, name: str) -> None:
        await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        taken.append(name)

    async def worker(payload: dict[str, Any]) -> dict[str, Any]:
        return {"doubled": payload["n"] * 2}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(base_url=gateway.url, viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", on_failed)
            page.on("response", on_response)

            await page.goto("/ui")
            assert page.url.endswith("/ui/login")
            await shot(page, "login")
            await page.fill("#token", "wrong")
            await page.click("button[type=submit]")
            assert "That is not the admin token." in await page.inner_text("main")
            await page.fill("#token", ADMIN_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/ui")
            # The overview refreshes in place: the statistics, read on the gateway's timer, reach it.
            await page.wait_for_function(
                "document.querySelector('#overview').innerText.includes('1 / 4')", timeout=15_000
            )
            async with page.expect_response(lambda r: r.url.endswith("/ui/overview/fragment"), timeout=10_000):
                pass
            assert "acme" in await page.inner_text("#overview")
            assert await page.locator("#overview svg#chart-throughput").count() == 1
            assert await page.locator("#overview svg#chart-latency").count() == 1
            assert await page.locator("#overview svg#chart-shares").count() == 1
            await shot(page, "overview")

            await page.click("nav >> text=Jobs")
            await page.fill("input[name=tenant]", "acme")
            await page.select_option("select[name=state]", "dead")
            await page.click("form.filters button")
            await page.wait_for_url("**/ui/jobs?*state=dead*")
            rows = page.locator("#jobs tbody tr")
            assert await rows.count() == 1
            await shot(page, "jobs")
            await page.click(f"#jobs a[href='/ui/jobs/{dead}']")
            await page.wait_for_url(f"**/ui/jobs/{dead}")
            assert "boom" in await page.inner_text("main")
            await shot(page, "job")

            await page.click("nav >> text=Queues")
            row = page.locator("#queues tr[data-queue='acme/mail']")
            await row.locator("button").click()
            await page.wait_for_selector("text=acme/mail paused")
            assert "paused" in await row.inner_text()
            await shot(page, "queues-paused")
            await row.locator("button", has_text="Resume").click()
            await page.wait_for_selector("text=acme/mail resumed")
            assert "active" in await row.inner_text()
            await shot(page, "queues")

            await page.click("nav >> text=Schedules")
            schedule = page.locator("#schedules tr[data-schedule='acme/nightly']")
            await schedule.locator("button", has_text="Disable").click()
            await page.wait_for_selector("text=acme/nightly disabled")
            await schedule.locator("button", has_text="Enable").click()
            await page.wait_for_selector("text=acme/nightly enabled")
            assert "03:00:00 UTC" in await schedule.inner_text()
            await shot(page, "schedules")

            await page.click("nav >> text=Workers")
            assert "box-1" in await page.inner_text("#workers")
            await shot(page, "workers")

            await page.click("nav >> text=Events")
            assert "audit" in await page.inner_text("#consumers")
            await shot(page, "events")

            await page.click("nav >> text=Tenants")
            assert "acme" in await page.inner_text("#tenants")
            await shot(page, "tenants")
            await page.click("#tenants a[href='/ui/tenants/acme']")
            await page.fill("#edit-tenant input[name=weight]", "2")
            await page.click("#edit-tenant button")
            await page.wait_for_selector("text=saved")
            assert await page.input_value("#edit-tenant input[name=weight]") == "2"
            await shot(page, "tenant")
            await page.click("#new-key")
            assert (await page.inner_text("#api-key")).startswith("tk_")
            await shot(page, "key-created")

            await page.click("nav >> text=Dead letters")
            await page.fill("input[name=tenant]", "acme")
            await page.click("form.filters button")
            await page.wait_for_url("**/ui/dead?*tenant=acme*")
            assert "boom" in await page.inner_text("#groups")
            await shot(page, "dead")
            await page.click("#jobs a.button")
            await page.wait_for_url("**/ui/dead/replay?*")
            await shot(page, "replay-confirm")

            async with WorkerClient(api.url, worker_id="ui-worker", api_key=key, queues=("mail",)) as client:
                runner = WorkerRunner(client, worker, wait_ms=1000)
                task = asyncio.create_task(runner.run())
                try:
                    await page.click("#confirm")
                    await page.wait_for_url(f"**/ui/jobs/{dead}?*")
                    assert "replayed" in await page.inner_text(".done")

                    async def succeeded() -> bool:
                        await page.reload()
                        return "succeeded" in await page.inner_text("h1")

                    await eventually(succeeded, timeout=30, every=0.3)
                    assert "doubled" in await page.inner_text("main")
                    await shot(page, "job-succeeded")
                finally:
                    runner.stop()
                    await asyncio.wait_for(task, 10)

            await page.click("text=Sign out")
            await page.wait_for_url("**/ui/login")
            await page.goto("/ui")
            assert page.url.endswith("/ui/login")
        finally:
            await browser.close()

    assert problems == []
    assert loaded == {"console.css", "console.js", "favicon.svg"}
    names = sorted(p.name for p in shots.iterdir())
    assert names == sorted(f"{n}.png" for n in taken)
    assert {*taken} >= {"overview", "jobs", "job", "dead", "queues", "schedules", "workers", "events", "tenants"}
    assert all((shots / n).stat().st_size > 1000 for n in names)


@pytest.mark.timeout(240)
async def test_on_the_demos_server_a_dead_job_is_found_read_replayed_and_succeeds(database_url: str) -> None:
    """What a new user does: `just demo --keep`, sign in with the token file it names, find a
    dead job, read its error, replay it and watch it succeed."""
    from playwright.async_api import async_playwright

    root = Path(__file__).resolve().parent.parent
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "examples.demo", "--database-url", database_url, "--flood", "400", "--seconds", "3", "--keep"),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert demo.stdout is not None
    seen: list[str] = []
    problems: list[str] = []
    try:
        console = token_file = None
        async with asyncio.timeout(150):
            while True:
                line = (await demo.stdout.readline()).decode()
                assert line, "the demo ended before keeping its server up:\n" + "".join(seen)
                seen.append(line)
                if m := re.search(r"console: (http://\S+)/ui \(sign in with the admin token in (.+)\)", line):
                    console, token_file = m.group(1), m.group(2)
                if "keep running" in line:
                    break
        assert console is not None and token_file is not None, "".join(seen)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(base_url=console)
                page.set_default_timeout(15_000)
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                await page.goto("/ui")
                await page.fill("#token", Path(token_file).read_text().strip())
                await page.click("button[type=submit]")
                await page.wait_for_url("**/ui")
                await page.click("nav >> text=Jobs")
                await page.select_option("select[name=state]", "dead")
                await page.fill("input[name=kind]", "crash")
                await page.click("form.filters button")
                await page.wait_for_url("**/ui/jobs?*state=dead*")
                await page.locator("#jobs tbody a[href^='/ui/jobs/']").first.click()
                await page.wait_for_url(re.compile(r".*/ui/jobs/\d+$"))
                assert "this job always fails" in await page.inner_text("#last-error")
                await page.click("#retry")  # "Replay", for a dead job
                assert "replayed" in await page.inner_text(".done")

                async def succeeded() -> bool:
                    await page.reload()
                    return "succeeded" in await page.inner_text("h1")

                await eventually(succeeded, timeout=30, every=0.3)
                assert "fixed" in await page.inner_text("main")  # the result the replayed run returned
            finally:
                await browser.close()
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(demo.communicate(), 60)
    out = "".join(seen) + rest.decode()
    assert demo.returncode == 0, out
    assert "stopped cleanly" in out
    assert problems == []
