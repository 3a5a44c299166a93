"""The console's pages and actions. Reads and changes go straight to the db functions; every
POST carries the session's CSRF token, and a signed-out browser is sent to the sign-in form."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect

import db
from core import JobState, parse_uint
from core.wire import MAX_JOB_EVENTS, QUEUE_RE

from ..auth import runtime_of
from ..runtime import Runtime
from . import session

PAGE_SIZE = 50
REPLAY_PAGE = 500
_HEADERS = {
    # Every script and style is a file of the package: nothing inline, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
_STATES = [s.value for s in JobState]


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters["when"] = _when
_env.filters["pretty"] = _pretty
_env.filters["age"] = _age


def _cookie(request: Request[Any, Any, Any]) -> str | None:
    return request.cookies.get(session.COOKIE)


def _signed_in(request: Request[Any, Any, Any]) -> bool:
    return session.valid(runtime_of(request).settings.admin_token, _cookie(request))


def _page(request: Request[Any, Any, Any], template: str, status: int = 200, **context: Any) -> Response[str]:
    rt = runtime_of(request)
    cookie = _cookie(request)
    token = rt.settings.admin_token
    csrf = session.csrf_token(token, cookie) if token is not None and cookie and session.valid(token, cookie) else ""
    html = _env.get_template(template).render(csrf=csrf, **context)
    return Response(content=html, status_code=status, media_type="text/html", headers=_HEADERS)


def _to_login() -> Response[Any]:
    return Redirect(path="/ui/login", status_code=303)


def _text(q: Mapping[str, Any], name: str) -> str | None:
    """A filter's value: None when empty; names never hold NUL or control characters."""
    value = q.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and value.isprintable() else None


async def _form(request: Request[Any, Any, Any]) -> dict[str, str] | None:
    """The posted fields when the CSRF token matches the session's; None when it does not."""
    token = runtime_of(request).settings.admin_token
    cookie = _cookie(request)
    if token is None or not session.valid(token, cookie) or cookie is None:
        return None
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return fields if session.csrf_ok(token, cookie, fields.get("csrf")) else None


def _forbidden(request: Request[Any, Any, Any]) -> Response[str]:
    return _page(
        request, "message.html", 403, title="Forbidden", message="The form was stale or not this session's: reload it."
    )


def _redirect(path: str, **query: str | None) -> Response[Any]:
    kept = {k: v for k, v in query.items() if v}
    return Redirect(path=path + (f"?{urlencode(kept)}" if kept else ""), status_code=303)


async def _overview(rt: Runtime) -> list[dict[str, Any]]:
    """Per tenant its limits and, per queue, the open work by state."""
    async with rt.pool.acquire() as conn:
        stats = await db.stats_read(conn)
    limits = {t.tenant_id: t for t in stats.tenants}
    queues: dict[tuple[str, str], dict[str, Any]] = {}
    for row in stats.jobs:
        q = queues.setdefault(
            (row.tenant_id, row.queue),
            {"queue": row.queue, "ready": 0, "scheduled": 0, "running": 0, "dead": 0, "oldest": None},
        )
        q[row.state] = row.count
        if row.oldest_ready_seconds is not None:
            q["oldest"] = row.oldest_ready_seconds
    tenants: dict[str, dict[str, Any]] = {}
    for (tenant_id, _), q in sorted(queues.items()):
        t = limits.get(tenant_id)
        entry = tenants.setdefault(
            tenant_id,
            {"id": tenant_id, "max_inflight": None if t is None else t.max_inflight, "running": 0, "queues": []},
        )
        entry["running"] += q["running"]
        entry["queues"].append(q)
    return list(tenants.values())


class ConsoleController(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/login")
    async def login_form(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if _signed_in(request):
            return Redirect(path="/ui", status_code=303)
        return _page(request, "login.html", message=None)

    @post("/login", status_code=200)
    async def login(self, request: Request[Any, Any, Any]) -> Response[Any]:
        expected = runtime_of(request).settings.admin_token
        form = await request.form()
        sent = form.get("token")
        if expected is None:
            return _page(request, "login.html", 200, message="This gateway has no admin token (ORCH_ADMIN_TOKEN).")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
            return _page(request, "login.html", 200, message="That is not the admin token.")
        response: Response[Any] = Redirect(path="/ui", status_code=303)
        response.set_cookie(
            Cookie(
                key=session.COOKIE,
                value=session.issue(expected),
                path="/ui",
                max_age=session.LIFETIME_SECONDS,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        )
        return response

    @post("/logout", status_code=200)
    async def logout(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if await _form(request) is None:
            return _forbidden(request)
        response = _to_login()
        response.delete_cookie(session.COOKIE, path="/ui")
        return response

    @get("")
    async def overview(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        return _page(request, "overview.html", nav="overview", tenants=await _overview(runtime_of(request)))

    @get("/overview/fragment")
    async def overview_fragment(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return Response(content="", status_code=401, headers=_HEADERS)
        return _page(request, "_overview_table.html", tenants=await _overview(runtime_of(request)))

    @get("/jobs")
    async def jobs(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        return await _job_list(request, "jobs.html", "jobs", dead_only=False)

    @get("/dead")
    async def dead(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        return await _job_list(request, "dead.html", "dead", dead_only=True)

    @get("/jobs/{job_id:str}")
    async def job(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with runtime_of(request).pool.acquire() as conn:
            found = None if jid is None else await db.job_admin_get(conn, jid)
            events = [] if found is None or jid is None else await db.job_events(conn, jid, MAX_JOB_EVENTS)
        if found is None:
            return _page(request, "message.html", 404, title="Not found", message=f"No job {job_id}.")
        return _page(
            request, "job.html", nav="jobs", job=found, events=events, done=_text(request.query_params, "done")
        )

    @post("/jobs/{job_id:str}/cancel", status_code=200)
    async def cancel(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
        if await _form(request) is None:
            return _forbidden(request)
        rt = runtime_of(request)
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with rt.pool.acquire() as conn:
            found = None if jid is None else await db.job_admin_get(conn, jid)
            outcome = None if found is None or jid is None else await db.job_cancel(conn, jid, found.tenant_id)
        if outcome is None:
            return _page(request, "message.html", 404, title="Not found", message=f"No job {job_id}.")
        if outcome.changed and outcome.job.state is JobState.CANCELLED:
            rt.metrics.jobs_cancelled.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
        if outcome.changed:
            done = "cancelled" if outcome.job.state is JobState.CANCELLED else "cancel requested"
        elif outcome.job.state is JobState.RUNNING:
            done = "cancel requested"
        else:
            done = f"a {outcome.job.state} job cannot be cancelled"
        return _redirect(f"/ui/jobs/{jid}", done=done)

    @post("/jobs/{job_id:str}/retry", status_code=200)
    async def retry(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
        if await _form(request) is None:
            return _forbidden(request)
        rt = runtime_of(request)
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with rt.pool.acquire() as conn:
            outcome = None if jid is None else (await db.job_replay_many(conn, [jid], None)).get(jid)
        if outcome is None:
            return _page(request, "message.html", 404, title="Not found", message=f"No job {job_id}.")
        if outcome.changed:
            rt.metrics.jobs_replayed.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
            done = "replayed"
        else:
            done = f"a {outcome.job.state} job cannot be replayed: only dead or cancelled ones"
        return _redirect(f"/ui/jobs/{jid}", done=done)

    @get("/dead/replay")
    async def replay_confirm(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        q = request.query_params
        tenant, queue = _text(q, "tenant"), _text(q, "queue")
        raw_id = _text(q, "id")
        job_id = None if raw_id is None else parse_uint(raw_id, maximum=db.MAX_JOB_ID)
        if tenant is None or (raw_id is not None and job_id is None):
            return _page(request, "message.html", 422, title="Replay", message="Pick a tenant (or a job) to replay.")
        async with runtime_of(request).pool.acquire() as conn:
            # The queues' dead figures, not a count over the jobs table.
            dead = sum(x.dead for x in await db.queue_list(conn, tenant) if queue is None or x.queue == queue)
        return _page(request, "replay.html", nav="dead", tenant=tenant, queue=queue, dead=dead, job_id=job_id)

    @post("/dead/replay", status_code=200)
    async def replay(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await _form(request)
        if form is None:
            return _forbidden(request)
        tenant, queue = _text(form, "tenant"), _text(form, "queue")
        if tenant is None:
            return _page(request, "message.html", 422, title="Replay", message="Pick a tenant to replay.")
        rt = runtime_of(request)
        total = 0
        after = 0
        async with rt.pool.acquire() as conn:
            while True:
                ids = await db.job_dead_ids(conn, tenant, queue, after, REPLAY_PAGE)
                if not ids:
                    break
                # One transaction per page keeps locks short on a large dead-letter queue.
                async with conn.transaction():
                    outcomes = await db.job_replay_many(conn, ids, tenant)
                total += sum(1 for o in outcomes.values() if o.changed)
                after = ids[-1]
        if total:
            rt.metrics.jobs_replayed.add(total, rt.metrics.labels(tenant, "*"))
        return _redirect("/ui/dead", tenant=tenant, queue=queue, done=f"replayed {total} job(s)")

    @get("/queues")
    async def queues(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        async with runtime_of(request).pool.acquire() as conn:
            listed = await db.queue_list(conn, None)
        return _page(request, "queues.html", nav="queues", queues=listed, done=_text(request.query_params, "done"))

    @post("/queues/pause", status_code=200)
    async def pause(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return await _pause(request, paused=True)

    @post("/queues/resume", status_code=200)
    async def resume(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return await _pause(request, paused=False)

    @get("/tenants")
    async def tenants(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if not _signed_in(request):
            return _to_login()
        async with runtime_of(request).pool.acquire() as conn:
            listed = await db.tenant_list(conn)
        return _page(request, "tenants.html", nav="tenants", tenants=listed)


async def _pause(request: Request[Any, Any, Any], *, paused: bool) -> Response[Any]:
    form = await _form(request)
    if form is None:
        return _forbidden(request)
    tenant, queue = _text(form, "tenant"), _text(form, "queue")
    if tenant is None or queue is None or not QUEUE_RE.match(queue):
        return _page(request, "message.html", 422, title="Queues", message="A tenant and a queue name are needed.")
    async with runtime_of(request).pool.acquire() as conn:
        if await db.tenant_get(conn, tenant) is None:
            return _page(request, "message.html", 404, title="Not found", message=f"No tenant {tenant}.")
        if paused:
            await db.queue_pause(conn, tenant, queue)
        else:
            await db.queue_resume(conn, tenant, queue)
    return _redirect("/ui/queues", done=f"{tenant}/{queue} {'paused' if paused else 'resumed'}")


async def _job_list(request: Request[Any, Any, Any], template: str, nav: str, *, dead_only: bool) -> Response[Any]:
    q = request.query_params
    filters = {name: _text(q, name) for name in ("tenant", "queue", "state", "kind", "id")}
    if dead_only:
        filters["state"] = JobState.DEAD.value
    errors = []
    jid = before = None
    if filters["state"] is not None and filters["state"] not in _STATES:
        errors.append(f"state must be one of {', '.join(_STATES)}")
        filters["state"] = None
    if filters["id"] is not None and (jid := parse_uint(filters["id"], maximum=db.MAX_JOB_ID)) is None:
        errors.append("id must be a job id (digits)")
        filters["id"] = None
    if (raw := _text(q, "before")) is not None:
        before = parse_uint(raw, maximum=db.MAX_JOB_ID)
    f = db.JobFilter(
        tenant_id=filters["tenant"], queue=filters["queue"], state=filters["state"], kind=filters["kind"], job_id=jid
    )
    async with runtime_of(request).pool.acquire() as conn:
        jobs = await db.job_admin_list(conn, f, before_id=before, limit=PAGE_SIZE + 1)
    more = len(jobs) > PAGE_SIZE
    jobs = jobs[:PAGE_SIZE]
    kept = {k: v for k, v in filters.items() if v is not None and not (dead_only and k == "state")}
    next_url = None
    if more:
        next_url = f"/ui/{nav}?{urlencode({**kept, 'before': jobs[-1].id})}"
    return _page(
        request,
        template,
        nav=nav,
        jobs=jobs,
        filters=filters,
        states=_STATES,
        error="; ".join(errors) or None,
        next_url=next_url,
        done=_text(q, "done"),
    )
