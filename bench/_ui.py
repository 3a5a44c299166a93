"""The ui phase: how long each page of the operator's console takes, signed in, on a large table."""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import aiohttp

from ._infra import BenchError
from ._report import Result, summary_ms
from ._session import Session, log

# The console's pages when gateway/ui/pages.py names none (its PAGES).
FALLBACK_PAGES = ("/ui", "/ui/jobs", "/ui/dead", "/ui/queues", "/ui/tenants")
WARM_REQUESTS = 2
COOKIE = "orch_ui"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)(?::[^}]*)?\}")


def console_pages() -> tuple[str, ...]:
    """The console's own list of its pages when it has one, else FALLBACK_PAGES."""
    try:
        pages: Any = getattr(importlib.import_module("gateway.ui.pages"), "PAGES", None)
    except ImportError:
        pages = None
    if not isinstance(pages, list | tuple) or not pages:
        return FALLBACK_PAGES
    out: list[str] = []
    for page in pages:
        # A path, or a (path, title, ...) entry.
        path = page if isinstance(page, str) else next((x for x in page if isinstance(x, str)), None)
        if isinstance(path, str) and path.startswith("/"):
            out.append(path)
    return tuple(out) or FALLBACK_PAGES


def _fill(path: str, values: dict[str, str]) -> str | None:
    """The path with its {placeholders} filled in; None when one names nothing known."""
    missing = [m.group(1) for m in _PLACEHOLDER.finditer(path) if m.group(1) not in values]
    if missing:
        return None
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], path)


def _paths(pages: Iterable[str], job_id: int, tenant: str, queue: str) -> list[tuple[str, str]]:
    """(label, path) of every page timed: the console's pages, one job's detail, and the jobs
    list filtered by tenant and by state=dead."""
    values = {"job_id": str(job_id), "id": str(job_id), "tenant": tenant, "tenant_id": tenant, "queue": queue}
    out: list[tuple[str, str]] = []
    for page in pages:
        path = _fill(page, values)
        if path is None:
            log(f"ui: skipping {page} (a placeholder the bench cannot fill)")
            continue
        out.append((page, path))
    out.append(("/ui/jobs/{job_id}", f"/ui/jobs/{job_id}"))
    out.append(("/ui/jobs?tenant=…", "/ui/jobs?" + urlencode({"tenant": tenant})))
    out.append(("/ui/jobs?state=dead", "/ui/jobs?state=dead"))
    # Once each, should the console's own list name one of the bench's extras.
    unique: dict[str, tuple[str, str]] = {}
    for label, path in out:
        unique.setdefault(path, (label, path))
    return list(unique.values())


async def _sign_in(http: aiohttp.ClientSession, url: str, token: str) -> str:
    async with http.post(url + "/ui/login", data={"token": token}, allow_redirects=False) as r:
        await r.read()
        cookie = r.cookies.get(COOKIE)
        if r.status != 303 or cookie is None:
            raise BenchError(f"POST /ui/login: {r.status}, no session cookie")
        return cookie.value


async def _time_page(http: aiohttp.ClientSession, url: str, cookie: str, path: str, n: int) -> Result:
    ms: list[float] = []
    size = 0
    for i in range(n + WARM_REQUESTS):
        t0 = time.perf_counter()
        async with http.get(url + path, headers={"Cookie": f"{COOKIE}={cookie}"}, allow_redirects=False) as r:
            body = await r.read()
        dt = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            # A finding about that page, not a reason to lose the run's other figures.
            log(f"ui: GET {path}: {r.status} {body[:300]!r}")
            return {"status": r.status, "error": body[:300].decode(errors="replace")}
        if i >= WARM_REQUESTS:
            ms.append(dt)
        size = len(body)
    out = summary_ms(ms)
    out["kb"] = size / 1000
    return out


async def ui_pages(s: Session, seeded: Result) -> Result:
    """GET each console page `ui_requests` times, one at a time, signed in as the operator."""
    cfg = s.cfg
    tenant = s.tenants[0][0]
    job_id = await s.conn.fetchval(
        "SELECT id FROM jobs WHERE tenant_id = $1 AND state = 'succeeded' ORDER BY id DESC LIMIT 1", tenant
    )
    if job_id is None:
        raise BenchError(f"ui: tenant {tenant} has no succeeded job to show")
    pages = _paths(console_pages(), job_id, tenant, "default")
    log(f"ui: {len(pages)} pages x {cfg.ui_requests} requests on {seeded.get('rows', 0):,} jobs")
    out: dict[str, Result] = {}
    async with aiohttp.ClientSession() as http:
        cookie = await _sign_in(http, s.url, s.token)
        for label, path in pages:
            fig = await _time_page(http, s.url, cookie, path, cfg.ui_requests)
            fig["path"] = path
            out[label] = fig
            if "error" not in fig:
                log(f"ui: {path}: p50 {fig['p50_ms']:.1f} ms, p95 {fig['p95_ms']:.1f} ms, {fig['kb']:.0f} kB")
    return {"rows": seeded.get("rows"), "requests": cfg.ui_requests, "pages": out}
