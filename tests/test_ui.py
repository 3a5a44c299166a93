"""The web console at /ui against a real gateway over real HTTP: signing in, the pages, CSRF."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, fetchval

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
async def browser(gateway: InProcessGateway) -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the cookie jar keeps cookies of an IP address host (127.0.0.1).
    async with aiohttp.ClientSession(base_url=gateway.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def _sign_in(s: aiohttp.ClientSession) -> str:
    """Sign in; returns the session's CSRF token, read from the overview's forms."""
    async with s.post("/ui/login", data={"token": ADMIN_TOKEN}) as r:
        assert r.status == 200 and r.url.path == "/ui", (r.status, r.url)
        html = await r.text()
    found = _CSRF.search(html)
    assert found is not None, html
    return found.group(1)


async def _dead_job(api: Api) -> str:
    key = await api.tenant("acme")
    job = (
        await api.signed(
            key, "POST", "/v1/jobs", {"payload": {"n": 1}, "queue": "mail", "kind": "email", "max_attempts": 1}
        )
    ).body
    lease = (
        await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "queues": ["mail"]})
    ).body
    token = lease["jobs"][0]["lease_token"]
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": token, "error": "boom"})
    assert r.status == 200 and r.body["state"] == "dead", r.body
    job_id: str = job["id"]
    return job_id


async def test_signed_out_browser_is_sent_to_the_sign_in_form(browser: aiohttp.ClientSession) -> None:
    for path in ("/ui", "/ui/jobs", "/ui/dead", "/ui/queues", "/ui/tenants", "/ui/jobs/1"):
        async with browser.get(path, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/ui/login", path
    async with browser.get("/ui") as r:
        assert r.status == 200 and r.url.path == "/ui/login"
        assert 'name="token"' in await r.text()


async def test_a_wrong_token_gets_the_form_back_with_a_message(browser: aiohttp.ClientSession) -> None:
    async with browser.post("/ui/login", data={"token": "not-it"}, allow_redirects=False) as r:
        html = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert "That is not the admin token." in html and 'name="token"' in html
        assert "Traceback" not in html and "Set-Cookie" not in r.headers
    async with browser.post("/ui/login", data={}, allow_redirects=False) as r:
        assert r.status == 200 and "That is not the admin token." in await r.text()


async def test_signing_in_sets_a_strict_http_only_cookie(browser: aiohttp.ClientSession) -> None:
    async with browser.post("/ui/login", data={"token": ADMIN_TOKEN}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui"
        cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("orch_ui=")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/ui" in flags
    assert "secure" not in flags  # plain http here; over https the cookie is Secure
    # A forged cookie is not a session.
    forged = cookie.split(";")[0][:-4] + "0000"
    async with (
        aiohttp.ClientSession(base_url=str(r.url.origin())) as other,
        other.get("/ui", headers={"Cookie": forged}, allow_redirects=False) as r2,
    ):
        assert r2.status == 303


async def test_the_cookie_is_secure_behind_an_https_proxy(browser: aiohttp.ClientSession) -> None:
    # uvicorn trusts X-Forwarded-Proto from the loopback address, as from a proxy on the host.
    headers = {"X-Forwarded-Proto": "https"}
    async with browser.post("/ui/login", data={"token": ADMIN_TOKEN}, headers=headers, allow_redirects=False) as r:
        assert r.status == 303
        flags = {part.strip().lower() for part in r.headers["Set-Cookie"].split(";")}
    assert "secure" in flags and "httponly" in flags


async def test_every_page_renders(api: Api, browser: aiohttp.ClientSession, gateway: InProcessGateway) -> None:
    dead = await _dead_job(api)
    await _sign_in(browser)
    pages: dict[str, list[str]] = {
        "/ui": ["acme", "mail"],
        "/ui/overview/fragment": ["acme", "mail"],
        "/ui/jobs": [f"/ui/jobs/{dead}"],
        "/ui/jobs?tenant=acme&queue=mail&state=dead&kind=email&id=" + dead: [f"/ui/jobs/{dead}"],
        f"/ui/jobs/{dead}": ["boom", "job.dead", "job.started", "&#34;n&#34;: 1"],
        "/ui/dead": [f"/ui/jobs/{dead}"],
        "/ui/dead?tenant=acme": ["Replay every dead job of acme"],
        "/ui/dead/replay?tenant=acme&queue=mail": ["Replay the 1 dead job(s)"],
        f"/ui/dead/replay?tenant=acme&id={dead}": [f'action="/ui/jobs/{dead}/retry"'],
        "/ui/queues": ["mail"],
        "/ui/tenants": ["acme"],
        "/ui/static/console.css": [":root"],
        "/ui/static/console.js": ["data-refresh"],
    }
    for path, expected in pages.items():
        async with browser.get(path, allow_redirects=False) as r:
            text = await r.text()
            assert r.status == 200, (path, r.status, text[:300])
            for piece in expected:
                assert piece in text, (path, piece)
    async with browser.get("/ui/jobs?state=nonsense&id=x") as r:
        text = await r.text()
        assert r.status == 200 and "state must be one of" in text
    async with browser.get("/ui/jobs/999999") as r:
        assert r.status == 404 and "No job 999999" in await r.text()
    async with browser.get("/ui") as r:
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]


async def test_jobs_page_through_with_a_keyset_cursor(api: Api, browser: aiohttp.ClientSession) -> None:
    key = await api.tenant("acme")
    batch = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"i": i}} for i in range(60)]})
    ids = sorted((int(j["id"]) for j in batch.body["jobs"]), reverse=True)
    await _sign_in(browser)
    async with browser.get("/ui/jobs?tenant=acme") as r:
        first = await r.text()
    found = re.search(r'href="(/ui/jobs\?[^"]*before=\d+)"', first)
    assert found is not None
    assert f'href="/ui/jobs/{ids[49]}"' in first and f'href="/ui/jobs/{ids[50]}"' not in first
    async with browser.get(found.group(1).replace("&amp;", "&")) as r:
        second = await r.text()
    assert f'href="/ui/jobs/{ids[50]}"' in second and f'href="/ui/jobs/{ids[59]}"' in second
    assert f'href="/ui/jobs/{ids[49]}"' not in second and "before=" not in second


async def test_actions_need_the_sessions_csrf_token(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    dead = await _dead_job(api)
    csrf = await _sign_in(browser)

    async def state() -> Any:
        return await fetchval(database_url, "SELECT state::text FROM jobs WHERE id = $1", int(dead))

    for path, data in (
        ("/ui/dead/replay", {"tenant": "acme", "queue": "mail"}),
        (f"/ui/jobs/{dead}/retry", {}),
        ("/ui/queues/pause", {"tenant": "acme", "queue": "mail"}),
        ("/ui/logout", {}),
    ):
        for sent in ({}, {"csrf": "0" * 64}):
            async with browser.post(path, data={**data, **sent}, allow_redirects=False) as r:
                assert r.status == 403, path
                assert "Forbidden" in await r.text()
    assert await state() == "dead"

    async with browser.post("/ui/dead/replay", data={"tenant": "acme", "queue": "mail", "csrf": csrf}) as r:
        assert r.status == 200 and r.url.path == "/ui/dead"
        assert "replayed 1 job(s)" in await r.text()
    assert await state() == "ready"
    async with browser.get(f"/ui/jobs/{dead}") as r:
        assert '<span class="state ready">ready</span>' in await r.text()

    async with browser.post(f"/ui/jobs/{dead}/cancel", data={"csrf": csrf}) as r:
        assert r.status == 200 and "cancelled" in await r.text()
    assert await state() == "cancelled"
    async with browser.post(f"/ui/jobs/{dead}/retry", data={"csrf": csrf}) as r:
        assert r.status == 200 and "replayed" in await r.text()
    assert await state() == "ready"

    async with browser.post("/ui/queues/pause", data={"tenant": "acme", "queue": "mail", "csrf": csrf}) as r:
        assert r.status == 200 and "acme/mail paused" in await r.text()
    paused = "SELECT count(*) FROM queue_pauses WHERE tenant_id = 'acme' AND queue = 'mail'"
    assert await fetchval(database_url, paused) == 1
    async with browser.post("/ui/queues/resume", data={"tenant": "acme", "queue": "mail", "csrf": csrf}) as r:
        assert r.status == 200 and "acme/mail resumed" in await r.text()
    assert await fetchval(database_url, paused) == 0
    async with browser.post("/ui/queues/pause", data={"tenant": "acme", "queue": "no such/q", "csrf": csrf}) as r:
        assert r.status == 422 and "queue name" in await r.text()
    async with browser.post("/ui/queues/pause", data={"tenant": "nobody", "queue": "mail", "csrf": csrf}) as r:
        assert r.status == 404 and "No tenant nobody" in await r.text()


async def test_sign_out_ends_the_session(browser: aiohttp.ClientSession) -> None:
    csrf = await _sign_in(browser)
    async with browser.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui/login"
        assert "orch_ui=" in r.headers["Set-Cookie"]
    async with browser.get("/ui", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui/login"
