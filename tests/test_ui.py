"""The web console at /ui against a real gateway over real HTTP: signing in, every page, the
actions and their CSRF tokens, the figures (statistics and history), and the plans of the
console's own statements on a seeded table."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest

import db
from core import Settings
from db._queries import sql
from gateway.services import history
from gateway.ui.figures import _quantile
from gateway.ui.pages import JOB_WINDOW, PAGES

from .conftest import ADMIN_TOKEN
from .support import Api, InProcessGateway, eventually, fetch, fetchval, running

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The statistics the pages count with are read every 0.2 s here, not every 10 s.
    return Settings(
        database_url=database_url, admin_token=ADMIN_TOKEN, reap_interval_seconds=0.2, stats_interval_seconds=0.2
    )


@pytest.fixture
async def browser(gateway: InProcessGateway) -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the cookie jar keeps cookies of an IP address host (127.0.0.1).
    async with aiohttp.ClientSession(base_url=gateway.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def _sign_in(s: aiohttp.ClientSession) -> str:
    """Sign in; returns the session's CSRF token, read from the overview's forms."""
    async with s.post("/ui/login", data={"token": ADMIN_TOKEN}) as r:
        assert r.status == 200 and r.url.path == "/ui", (r.status, r.url)
        text = await r.text()
    found = _CSRF.search(text)
    assert found is not None, text
    return found.group(1)


async def _get(s: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    async with s.get(path, allow_redirects=False) as r:
        text = await r.text()
        assert r.status == status, (path, r.status, text[:500])
        assert "Traceback" not in text
        return text


async def _post(s: aiohttp.ClientSession, path: str, data: dict[str, Any], status: int = 200) -> str:
    async with s.post(path, data=data) as r:
        text = await r.text()
        assert r.status == status, (path, r.status, text[:500])
        return text


async def _dead_job(api: Api, key: str, *, queue: str = "mail", kind: str = "email", error: str = "boom") -> str:
    job = (
        await api.signed(
            key, "POST", "/v1/jobs", {"payload": {"n": 1}, "queue": queue, "kind": kind, "max_attempts": 1}
        )
    ).body
    lease = (
        await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "queues": [queue]})
    ).body
    token = lease["jobs"][0]["lease_token"]
    r = await api.signed(key, "POST", f"/v1/jobs/{job['id']}/fail", {"lease_token": token, "error": error})
    assert r.status == 200 and r.body["state"] == "dead", r.body
    job_id: str = job["id"]
    return job_id


async def _stats_show(s: aiohttp.ClientSession, path: str, piece: str) -> str:
    """The page once the statistics (read on the gateway's timer) show `piece`."""

    async def check() -> str | None:
        text = await _get(s, path)
        return text if piece in text else None

    return await eventually(check, timeout=10, every=0.1)


def _unescaped(text: str) -> str:
    return html.unescape(text)


async def test_signed_out_browser_is_sent_to_the_sign_in_form(browser: aiohttp.ClientSession) -> None:
    for path in (*PAGES, "/ui/jobs/1", "/ui/tenants/acme", "/ui/dead/replay?tenant=acme"):
        async with browser.get(path, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/ui/login", path
    async with browser.get("/ui/overview/fragment", allow_redirects=False) as r:
        assert r.status == 401
    async with browser.get("/ui") as r:
        assert r.status == 200 and r.url.path == "/ui/login"
        assert 'name="token"' in await r.text()


async def test_a_wrong_token_gets_the_form_back_with_a_message(browser: aiohttp.ClientSession) -> None:
    async with browser.post("/ui/login", data={"token": "not-it"}, allow_redirects=False) as r:
        text = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert "That is not the admin token." in text and 'name="token"' in text
        assert "Traceback" not in text and "Set-Cookie" not in r.headers
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


async def test_every_page_renders(api: Api, browser: aiohttp.ClientSession) -> None:
    key = await api.tenant("acme", max_inflight=4)
    dead = await _dead_job(api, key)
    traced = await api.signed(
        key,
        "POST",
        "/v1/jobs",
        {"payload": {}, "queue": "mail", "idempotency_key": "order-7"},
    )
    await _sign_in(browser)
    await _stats_show(browser, "/ui", "0 / 4")
    pages: dict[str, list[str]] = {
        "/ui": ["acme", "mail", 'id="chart-throughput"', 'id="chart-latency"', "0 / 4"],
        "/ui/overview/fragment": ["acme", "mail", "<svg"],
        "/ui/jobs": [f"/ui/jobs/{dead}", f"/ui/jobs/{traced.body['id']}"],
        "/ui/jobs?tenant=acme&queue=mail&state=dead&kind=email&id=" + dead: [f"/ui/jobs/{dead}"],
        "/ui/jobs?key=order-7": [f"/ui/jobs/{traced.body['id']}"],
        "/ui/jobs?tenant=acme&key=order-7": [f"/ui/jobs/{traced.body['id']}"],
        f"/ui/jobs/{dead}": ["boom", "job.dead", "job.started", "&#34;n&#34;: 1", 'id="worker">w<'],
        f"/ui/jobs/{traced.body['id']}": ["order-7"],
        "/ui/dead": [f"/ui/jobs/{dead}", 'id="groups"', "boom"],
        "/ui/dead?tenant=acme": ["Replay every dead job of acme"],
        "/ui/dead/replay?tenant=acme&queue=mail": ["Replay the 1 dead job(s)"],
        f"/ui/dead/replay?tenant=acme&id={dead}": [f'action="/ui/jobs/{dead}/retry"'],
        "/ui/queues": ["mail"],
        "/ui/schedules": ["No schedules."],
        "/ui/workers": ["No worker holds a lease."],
        "/ui/events": ["No durable consumers.", "No webhooks."],
        "/ui/tenants": ["acme", "New tenant"],
        "/ui/tenants/acme": ["API keys", 'name="weight"', 'value="4"'],
        "/ui/static/console.css": [":root", "svg.chart"],
        "/ui/static/console.js": ["data-refresh"],
        "/ui/static/favicon.svg": ["<svg"],
    }
    for path, expected in pages.items():
        text = await _get(browser, path)
        for piece in expected:
            assert piece in text, (path, piece)
    assert set(PAGES) <= set(pages)
    text = await _get(browser, "/ui/jobs?state=nonsense&id=x&before=y")
    assert "state: must be one of" in text and "id: must be a job id" in text and "before: must be" in text
    assert "No job 999999" in await _get(browser, "/ui/jobs/999999", 404)
    assert "No job x" in await _get(browser, "/ui/jobs/x", 404)
    assert "No tenant nobody" in await _get(browser, "/ui/tenants/nobody", 404)
    assert "tenant: pick a tenant" in await _get(browser, "/ui/dead/replay", 422)
    assert "id: each must be a job id" in await _get(browser, "/ui/dead/replay?id=x", 422)
    assert "after: must be" in await _get(browser, "/ui/schedules?after=-1", 422)
    async with browser.get("/ui") as r:
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        text = await r.text()
    # No inline script or style: the CSP would refuse them.
    assert "<style" not in text and " style=" not in text and "<script>" not in text


async def test_jobs_page_through_with_a_keyset_cursor(api: Api, browser: aiohttp.ClientSession) -> None:
    key = await api.tenant("acme")
    batch = await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {"i": i}} for i in range(60)]})
    ids = sorted((int(j["id"]) for j in batch.body["jobs"]), reverse=True)
    await _sign_in(browser)
    first = await _get(browser, "/ui/jobs?tenant=acme")
    found = re.search(r'href="(/ui/jobs\?[^"]*before=\d+)"', first)
    assert found is not None
    assert f'href="/ui/jobs/{ids[49]}"' in first and f'href="/ui/jobs/{ids[50]}"' not in first
    second = await _get(browser, found.group(1).replace("&amp;", "&"))
    assert f'href="/ui/jobs/{ids[50]}"' in second and f'href="/ui/jobs/{ids[59]}"' in second
    assert f'href="/ui/jobs/{ids[49]}"' not in second and "before=" not in second


async def test_a_queue_filter_reads_a_bounded_window(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    # One job in a rare queue, older than a window's worth of jobs in another: the first page
    # reads one window, finds nothing, and says so; "Search older" goes on below it.
    key = await api.tenant("acme")
    rare = (await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": "rare"})).body["id"]
    conn = await db.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (tenant_id, queue, state, max_attempts, started_at, finished_at) "
            "SELECT 'acme', 'bulk', 'succeeded', 1, now(), now() FROM generate_series(1, $1)",
            JOB_WINDOW + 10,
        )
    finally:
        await conn.close()
    await _sign_in(browser)
    for path in ("/ui/jobs?queue=rare", "/ui/jobs?tenant=acme&queue=rare", "/ui/jobs?tenant=acme&kind=nothing"):
        first = await _get(browser, path)
        assert f"this page looked at the newest {JOB_WINDOW:,} jobs" in first, path
        assert f"/ui/jobs/{rare}" not in first
        more = re.search(r'href="(/ui/jobs\?[^"]*before=\d+)">Search older', first)
        assert more is not None, path
        second = await _get(browser, more.group(1).replace("&amp;", "&"))
        if "kind=" not in path:
            assert f'href="/ui/jobs/{rare}"' in second, path
        assert "Search older" not in second and "Older →" not in second
    # A state across every tenant: each tenant's window, merged.
    page = await _get(browser, "/ui/jobs?state=ready&queue=rare")
    assert f'href="/ui/jobs/{rare}"' in page


async def test_actions_need_the_sessions_csrf_token(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    key = await api.tenant("acme")
    dead = await _dead_job(api, key)
    csrf = await _sign_in(browser)

    async def state() -> Any:
        return await fetchval(database_url, "SELECT state::text FROM jobs WHERE id = $1", int(dead))

    for path, data in (
        ("/ui/dead/replay", {"tenant": "acme", "queue": "mail"}),
        ("/ui/dead/replay", {"id": dead}),
        (f"/ui/jobs/{dead}/retry", {}),
        (f"/ui/jobs/{dead}/cancel", {}),
        ("/ui/queues/pause", {"tenant": "acme", "queue": "mail"}),
        ("/ui/queues/resume", {"tenant": "acme", "queue": "mail"}),
        ("/ui/schedules/pause", {"tenant": "acme", "name": "s"}),
        ("/ui/webhooks/1/resume", {"tenant": "acme"}),
        ("/ui/tenants", {"id": "evil"}),
        ("/ui/tenants/acme", {"weight": "9"}),
        ("/ui/tenants/acme/keys", {}),
        ("/ui/keys/x/revoke", {}),
        ("/ui/worker-keys", {}),
        ("/ui/logout", {}),
    ):
        for sent in ({}, {"csrf": "0" * 64}):
            async with browser.post(path, data={**data, **sent}, allow_redirects=False) as r:
                assert r.status == 403, path
                assert "Forbidden" in await r.text()
    assert await state() == "dead"
    assert await fetchval(database_url, "SELECT count(*) FROM tenants") == 1
    assert await fetchval(database_url, "SELECT weight FROM tenants WHERE id = 'acme'") == 1

    text = await _post(browser, "/ui/dead/replay", {"tenant": "acme", "queue": "mail", "csrf": csrf})
    assert "replayed 1 job(s)" in text
    assert await state() == "ready"
    assert '<span class="state ready">ready</span>' in await _get(browser, f"/ui/jobs/{dead}")

    assert "cancelled" in await _post(browser, f"/ui/jobs/{dead}/cancel", {"csrf": csrf})
    assert await state() == "cancelled"
    assert "cannot be cancelled" in await _post(browser, f"/ui/jobs/{dead}/cancel", {"csrf": csrf})
    assert "replayed" in await _post(browser, f"/ui/jobs/{dead}/retry", {"csrf": csrf})
    assert await state() == "ready"
    assert "cannot be replayed" in await _post(browser, f"/ui/jobs/{dead}/retry", {"csrf": csrf})

    text = await _post(browser, "/ui/queues/pause", {"tenant": "acme", "queue": "mail", "csrf": csrf})
    assert "acme/mail paused" in text
    paused = "SELECT count(*) FROM queue_pauses WHERE tenant_id = 'acme' AND queue = 'mail'"
    assert await fetchval(database_url, paused) == 1
    text = await _post(browser, "/ui/queues/resume", {"tenant": "acme", "queue": "mail", "csrf": csrf})
    assert "acme/mail resumed" in text
    assert await fetchval(database_url, paused) == 0
    text = await _post(browser, "/ui/queues/pause", {"tenant": "acme", "queue": "no such/q", "csrf": csrf}, 422)
    assert "queue name" in text
    text = await _post(browser, "/ui/queues/pause", {"tenant": "nobody", "queue": "mail", "csrf": csrf}, 404)
    assert "No tenant nobody" in text


async def test_dead_letters_group_and_replay_by_group_or_selection(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    key = await api.tenant("acme")
    traceback = 'Traceback (most recent call last):\n  File "w.py", line 3, in run\nValueError: bad input\n'
    bad = [await _dead_job(api, key, kind="parse", error=traceback) for _ in range(3)]
    other = [await _dead_job(api, key, kind="send", error="smtp down") for _ in range(2)]
    csrf = await _sign_in(browser)
    page = await _get(browser, "/ui/dead?tenant=acme")
    groups = page.split('id="groups"')[1].split("</table>")[0]
    # Grouped by the error's last line: the exception a traceback ends with.
    assert "ValueError: bad input" in groups and "smtp down" in groups and "Traceback" not in groups
    link = re.search(r'href="(/ui/dead/replay\?[^"]*kind=parse[^"]*)"', groups)
    assert link is not None
    confirm = await _get(browser, _unescaped(link.group(1)))
    assert "Replay the 3 dead job(s)" in confirm and "ValueError: bad input" in confirm
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm))
    text = await _post(browser, "/ui/dead/replay", {k: _unescaped(v) for k, v in form.items()})
    assert "replayed 3 job(s)" in text

    async def states(ids: list[str]) -> list[str]:
        rows = await fetch(
            database_url, "SELECT state::text FROM jobs WHERE id = ANY($1) ORDER BY id", [int(i) for i in ids]
        )
        return [r[0] for r in rows]

    assert await states(bad) == ["ready"] * 3
    assert await states(other) == ["dead"] * 2

    # A selection: the ticked ids, confirmed, then replayed.
    confirm = await _get(browser, f"/ui/dead/replay?id={other[0]}&id={other[1]}")
    assert "Replay the 2 selected job(s)" in confirm
    data = aiohttp.FormData([("id", other[0]), ("id", other[1]), ("csrf", csrf)])
    async with browser.post("/ui/dead/replay", data=data) as r:
        assert r.status == 200 and "replayed 2 of 2 selected job(s)" in await r.text()
    assert await states(other) == ["ready"] * 2
    assert "Replay the 0 dead job(s)" in await _get(browser, "/ui/dead/replay?tenant=acme")


async def test_schedules_are_listed_and_enabled_or_disabled(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    key = await api.tenant("acme")
    r = await api.signed(key, "POST", "/v1/schedules/", {"name": "nightly", "cron": "0 3 * * *", "queue": "mail"})
    assert r.status == 201, r.body
    csrf = await _sign_in(browser)
    page = await _get(browser, "/ui/schedules")
    row = page.split('data-schedule="acme/nightly"')[1].split("</tr>")[0]
    assert "0 3 * * *" in row and "enabled" in row and "never" in row
    assert len(re.findall(r"\d{4}-\d\d-\d\d 03:00:00 UTC", row)) == 3  # the next three fire times
    text = await _post(browser, "/ui/schedules/pause", {"tenant": "acme", "name": "nightly", "csrf": csrf})
    assert "acme/nightly disabled" in text
    query = "SELECT paused FROM schedules WHERE tenant_id = 'acme' AND name = 'nightly'"
    assert await fetchval(database_url, query) is True
    text = await _post(browser, "/ui/schedules/resume", {"tenant": "acme", "name": "nightly", "csrf": csrf})
    assert "acme/nightly enabled" in text
    assert await fetchval(database_url, query) is False
    due = "SELECT next_fire_at > now() FROM schedules WHERE tenant_id = 'acme' AND name = 'nightly'"
    assert await fetchval(database_url, due) is True
    text = await _post(browser, "/ui/schedules/pause", {"tenant": "acme", "name": "none", "csrf": csrf}, 404)
    assert "No schedule none" in text
    assert "name: a tenant" in await _post(browser, "/ui/schedules/pause", {"csrf": csrf}, 422)


async def test_workers_and_events_pages(api: Api, browser: aiohttp.ClientSession, database_url: str) -> None:
    key = await api.tenant("acme")
    await api.signed(key, "POST", "/v1/jobs", {"payload": {}, "queue": "mail"})
    lease = await api.signed(key, "POST", "/v1/workers/lease", {"worker_id": "box-1", "wait_ms": 0, "queues": ["mail"]})
    assert lease.body["jobs"]
    r = await api.signed(key, "POST", "/v1/consumers", {"name": "audit", "start": "oldest"})
    assert r.status == 201, r.body
    conn = await db.connect(database_url)
    try:
        hook = await conn.fetchval(
            "INSERT INTO webhooks (tenant_id, url, secret, state, cursor_xid, cursor_id, attempts, last_status, "
            "last_error, last_attempt_at) VALUES ('acme', 'https://hooks.example.invalid/x', 's', 'parked', "
            "pg_current_xact_id(), 0, 8, 503, 'HTTP 503 from the endpoint', now()) RETURNING id"
        )
    finally:
        await conn.close()
    csrf = await _sign_in(browser)
    workers = await _get(browser, "/ui/workers")
    row = workers.split('data-worker="box-1"')[1].split("</tr>")[0]
    assert "acme" in row and "mail" in row
    events = await _stats_show(browser, "/ui/events", "audit")
    assert "https://hooks.example.invalid/x" in events and "parked" in events and "HTTP 503" in events
    text = await _post(browser, f"/ui/webhooks/{hook}/resume", {"tenant": "acme", "csrf": csrf})
    assert f"webhook {hook} resumed" in text
    assert await fetchval(database_url, "SELECT state FROM webhooks WHERE id = $1", hook) == "active"
    text = await _post(browser, f"/ui/webhooks/{hook}/resume", {"tenant": "other", "csrf": csrf}, 404)
    assert "No webhook" in text


async def test_tenants_are_created_edited_and_keyed(
    api: Api, browser: aiohttp.ClientSession, database_url: str
) -> None:
    csrf = await _sign_in(browser)
    text = await _post(browser, "/ui/tenants", {"id": "acme", "weight": "3", "max_inflight": "", "csrf": csrf})
    found = re.search(r'<pre id="api-key">([^<]+)</pre>', text)
    assert found is not None and "shown this once" in text
    api_key = found.group(1)
    r = await api.signed(api_key, "POST", "/v1/jobs", {"payload": {}})
    assert r.status == 201, r.body  # the key shown works
    assert "tenant acme exists" in await _post(browser, "/ui/tenants", {"id": "acme", "csrf": csrf}, 409)
    text = await _post(browser, "/ui/tenants", {"id": "bad id", "csrf": csrf}, 422)
    assert "id: " in text and 'value="bad id"' in text
    assert "weight: " in await _post(browser, "/ui/tenants", {"id": "b", "weight": "0", "csrf": csrf}, 422)
    assert "weight: " in await _post(browser, "/ui/tenants", {"id": "b", "weight": "x", "csrf": csrf}, 422)
    text = await _post(
        browser, "/ui/tenants/acme", {"name": "Acme", "weight": "5", "max_inflight": "7", "enabled": "1", "csrf": csrf}
    )
    assert "saved" in text
    row = (await fetch(database_url, "SELECT name, weight, max_inflight, disabled FROM tenants WHERE id = 'acme'"))[0]
    assert tuple(row) == ("Acme", 5, 7, False)
    # Unticked "enabled" disables; an empty cap is no limit.
    await _post(browser, "/ui/tenants/acme", {"name": "Acme", "weight": "5", "max_inflight": "", "csrf": csrf})
    row = (await fetch(database_url, "SELECT max_inflight, disabled FROM tenants WHERE id = 'acme'"))[0]
    assert tuple(row) == (None, True)
    text = await _post(browser, "/ui/tenants/acme", {"weight": "99999", "csrf": csrf})
    assert "weight: " in text  # back on the tenant's page, the field named
    assert "No tenant nobody" in await _post(browser, "/ui/tenants/nobody", {"weight": "2", "csrf": csrf}, 404)

    text = await _post(browser, "/ui/tenants/acme/keys", {"csrf": csrf})
    second = re.search(r'<pre id="api-key">([^<]+)</pre>', text)
    assert second is not None and second.group(1) != api_key
    key_id = second.group(1).split(".")[0]
    page = await _get(browser, "/ui/tenants/acme")
    assert key_id in page and api_key.split(".")[1] not in page  # ids listed, never secrets
    text = await _post(browser, f"/ui/keys/{key_id}/revoke", {"tenant": "acme", "csrf": csrf})
    assert f"key {key_id} revoked" in text
    assert await fetchval(database_url, "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = $1", key_id)
    assert "No key nope" in await _post(browser, "/ui/keys/nope/revoke", {"csrf": csrf}, 404)
    assert "No tenant nobody" in await _post(browser, "/ui/tenants/nobody/keys", {"csrf": csrf}, 404)

    text = await _post(browser, "/ui/worker-keys", {"csrf": csrf})
    worker = re.search(r'<pre id="api-key">(wk_[^<]+)</pre>', text)
    assert worker is not None
    assert (
        await fetchval(database_url, "SELECT tenant_id FROM api_keys WHERE key_id = $1", worker.group(1).split(".")[0])
        is None
    )


async def test_overview_draws_throughput_latency_and_fair_share(
    api: Api, browser: aiohttp.ClientSession, gateway: InProcessGateway
) -> None:
    rt = gateway.runtime
    small = await api.tenant("small", weight=1)
    big = await api.tenant("big", weight=3)
    await history.sample(rt)
    for key in (small, big):
        await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}} for _ in range(4)]})
    lease = await api.signed(small, "POST", "/v1/workers/lease", {"worker_id": "w", "wait_ms": 0, "max_jobs": 2})
    for job in lease.body["jobs"]:
        r = await api.signed(
            small, "POST", f"/v1/jobs/{job['id']}/complete", {"lease_token": job["lease_token"], "result": {}}
        )
        assert r.status == 200, r.body
    await history.sample(rt)
    await _sign_in(browser)
    page = await _stats_show(browser, "/ui", 'data-tenant="big"')
    throughput = page.split('id="chart-throughput"')[1].split("</svg>")[0]
    assert "<polyline" in throughput or "<circle" in throughput
    assert "collecting" not in throughput
    latency = page.split('id="chart-latency"')[1].split("</svg>")[0]
    assert "<circle" in latency or "<polyline" in latency
    shares = page.split('id="chart-shares"')[1].split("</svg>")[0]
    # Both want work; by weight small is due a quarter and big three quarters; small took every lease.
    assert ">small<" in shares and ">big<" in shares and "25%" in shares and "75%" in shares and "100%" in shares
    row = page.split('data-tenant="small"')[1].split("</tr>")[0]
    assert "100% / 25%" in row
    big_row = page.split('data-tenant="big"')[1].split("</tr>")[0]
    assert "0% / 75%" in big_row


async def test_history_reads_the_metrics_exposition(gateway: InProcessGateway) -> None:
    rt = gateway.runtime
    labels = rt.metrics.labels("acme", "mail")
    rt.metrics.jobs_leased.add(3, labels)
    rt.metrics.jobs_succeeded.add(2, labels)
    rt.metrics.queue_wait.record(0.02, labels)
    rt.metrics.queue_wait.record(4.0, labels)
    total, tenants = history.parse(history.read_exposition(rt))
    assert tenants is not None and tenants["acme"].leased == 3 and tenants["acme"].succeeded == 2
    assert total.wait_count == 2 and abs(total.wait_sum - 4.02) < 1e-9
    assert total.wait_buckets[float("inf")] == 2 and total.wait_buckets[0.025] == 1
    # Half the waits under 25 ms, half between 2.5 s and 5 s: the median falls at the first's bound.
    assert _quantile(total.wait_buckets, {}, 0.5) == pytest.approx(0.025)
    assert 2.5 < (_quantile(total.wait_buckets, {}, 0.95) or 0) <= 5.0


async def test_history_merges_the_processes_behind_one_port(settings: Settings, tmp_path: Any) -> None:
    # With several processes behind one port, each reads the snapshots of all of them.
    shared = msgspec.structs.replace(settings, metrics_dir=str(tmp_path))
    async with running(InProcessGateway(shared)) as gw:
        rt = gw.runtime
        rt.metrics.jobs_succeeded.add(5, rt.metrics.labels("acme", "mail"))
        total, tenants = history.parse(history.read_exposition(rt))
        assert total.succeeded == 5 and tenants is not None and tenants["acme"].succeeded == 5
        s = await history.sample(rt)
        assert history.history_of(rt).samples[-1] is s


async def test_hostile_input_is_never_a_500(api: Api, browser: aiohttp.ClientSession) -> None:
    await api.tenant("acme")
    csrf = await _sign_in(browser)
    for path in (
        "/ui/tenants/%00",
        "/ui/tenants/a%2Fb",
        "/ui/jobs/%00",
        "/ui/jobs/99999999999999999999999",
    ):
        async with browser.get(path) as r:
            assert r.status == 404, path
    for path in (
        "/ui/jobs?tenant=%00&queue=%00&kind=%00&key=%00",
        "/ui/jobs?before=99999999999999999999999",
        "/ui/dead?tenant=" + "x" * 5000,
        "/ui/dead/replay?tenant=acme&error=%00",
        "/ui/schedules?tenant=%00",
        "/ui/events?after=99999999999999999999999",
    ):
        async with browser.get(path) as r:
            assert r.status < 500, (path, r.status)
    for path, data in (
        ("/ui/tenants/%00", {"weight": "2"}),
        ("/ui/tenants/%00/keys", {}),
        ("/ui/keys/%00/revoke", {}),
        ("/ui/tenants", {"id": "ok", "name": "a\x00b"}),
        ("/ui/tenants/acme", {"name": "a\x00b", "weight": "2"}),
        ("/ui/tenants/acme", {"weight": "99999999999999999999999"}),
        ("/ui/queues/pause", {"tenant": "\x00", "queue": "q"}),
        ("/ui/schedules/pause", {"tenant": "acme", "name": "\x00"}),
        ("/ui/dead/replay", {"id": "99999999999999999999999"}),
        ("/ui/dead/replay", {"tenant": "acme", "kind": "\x00"}),
        ("/ui/webhooks/99999999999999999999999/resume", {"tenant": "acme"}),
    ):
        async with browser.post(path, data={**data, "csrf": csrf}) as r:
            assert r.status < 500, (path, r.status, (await r.text())[:300])
    assert "acme" in await _get(browser, "/ui/tenants")


async def test_sign_out_ends_the_session(browser: aiohttp.ClientSession) -> None:
    csrf = await _sign_in(browser)
    async with browser.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui/login"
        assert "orch_ui=" in r.headers["Set-Cookie"]
    async with browser.get("/ui", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui/login"


# --- the console's statements on a seeded table: index scans, never a scan of jobs ----------

SEED = """
INSERT INTO tenants (id, weight) SELECT 't' || g, 1 + g % 3 FROM generate_series(1, 20) g;
INSERT INTO jobs (tenant_id, queue, kind, state, attempts, max_attempts, started_at, finished_at, last_error)
SELECT 't' || (1 + g % 20), 'q' || (g % 7), 'k' || (g % 5), s.state::job_state, 1, 1,
       CASE WHEN s.state IN ('succeeded', 'dead') THEN now() END,
       CASE WHEN s.state IN ('succeeded', 'dead') THEN now() END,
       CASE WHEN s.state = 'dead' THEN 'Traceback\nValueError: ' || (g % 3) END
  FROM generate_series(1, 60000) g
 CROSS JOIN LATERAL (SELECT CASE WHEN g % 10 = 0 THEN 'ready' WHEN g % 97 = 0 THEN 'dead'
                                 ELSE 'succeeded' END AS state) s;
"""


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[Any]:
    c = await db.connect(database_url)
    await c.execute(SEED)
    await c.execute("VACUUM ANALYZE jobs")
    try:
        yield c
    finally:
        await c.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


STATEMENTS: list[tuple[str, tuple[Any, ...]]] = [
    ("console_window_all", (2**62, 500, "q1", None, 51)),
    ("console_window_tenant", ("t1", 2**62, 500, "q1", None, 51)),
    ("console_window_tenant_state", ("t1", "succeeded", 2**62, 500, "q1", None, 51)),
    ("console_window_state", ("dead", 2**62, 25, "q1", None, 51)),
    ("console_dead_groups", (None, 100, 50)),
    ("console_dead_groups", ("t1", 100, 50)),
    ("console_dead_groups_queue", (None, "q1", 100, 50)),
    ("console_dead_count", ("t1", "q1", None, "ValueError: 1", 1000)),
    ("console_dead_count_tenant", ("t1", "k1", None, 1000)),
    ("console_dead_count_indexed", ("t1", "q1", 10000)),
    ("console_dead_count_indexed", ("t1", None, 10000)),
    ("console_dead_ids", ("t1", 0, None, None, "ValueError: 1", 500)),
    ("console_jobs_by_ids", ([1, 2, 3],)),
]


@pytest.mark.timeout(120)
async def test_console_statements_read_indexes(seeded: Any) -> None:
    # Planned for the values given, as the console runs them (db.console.job_window); which index
    # serves best depends on how the tenants' jobs interleave, but it is always an index.
    await seeded.execute("SET plan_cache_mode = force_custom_plan")
    for name, args in STATEMENTS:
        raw = await seeded.fetchval("EXPLAIN (FORMAT JSON) " + sql(name), *args)
        nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "jobs"], (name, raw)
        assert any(n.get("Index Name", "").startswith("jobs_") for n in nodes), (name, raw)
        await seeded.fetch(sql(name), *args)
