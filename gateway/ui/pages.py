"""The console's pages and actions. Reads and changes go to the db functions the admin API uses,
or to the bounded reads of `db.console`; counts come from the stats service's last read and the
console's history, never from a count over the jobs table. Every POST carries the session's
CSRF token, and a signed-out browser is sent to the sign-in form."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect

import db
from core import JobState, parse_uint, signing
from core.cron import next_fire, parse_cron, parse_timezone
from core.wire import QUEUE_RE, Schedule, TenantCreate, TenantPatch

from ..auth import runtime_of
from ..runtime import Runtime
from ..services import history, scheduler, webhook_publisher
from . import figures, session
from .web import (
    HEADERS,
    AnyRequest,
    forbidden,
    form_of,
    message,
    page,
    redirect,
    signed_in,
    text,
    to_login,
)

log = logging.getLogger("orchestrator.gateway")

# The console's pages that take no id, for whoever visits them all (the bench times each one).
PAGES = (
    "/ui",
    "/ui/jobs",
    "/ui/dead",
    "/ui/queues",
    "/ui/schedules",
    "/ui/workers",
    "/ui/events",
    "/ui/tenants",
)

PAGE_SIZE = 50
# A listing filtered by queue or kind reads at most this many rows a page (each a heap fetch:
# on a cold cache some tens of microseconds, so a page stays well within 100 ms).
JOB_WINDOW = 1000
# The dead-letter groups are drawn from about this many of the newest dead jobs, as is the count
# of a replay's confirmation filtered by kind or error.
GROUP_SAMPLE = 500
GROUPS_SHOWN = 50
REPLAY_PAGE = 500
# One confirmation replays at most this many jobs; the page says when more match.
REPLAY_MAX = 10_000
SELECTION_MAX = 500
PAUSES_SHOWN = 1000
LIST_SIZE = 100  # schedules and webhooks a page
JOB_EVENTS_SHOWN = 200
NEXT_FIRES = 3
_STATES = [s.value for s in JobState]


_KEY_ID = re.compile(r"^[A-Za-z0-9_]{1,64}(?!\n)$")


def _tenant_id(value: str) -> str | None:
    """A path's tenant id when it can name one: anything else (a NUL, a slash) names none."""
    return value if QUEUE_RE.match(value) else None


def _ids(values: Sequence[Any]) -> list[int] | None:
    """Job ids from repeated fields; None when one is not an id."""
    out: list[int] = []
    for v in values:
        jid = parse_uint(str(v).strip(), maximum=db.MAX_JOB_ID)
        if jid is None:
            return None
        out.append(jid)
    return list(dict.fromkeys(out))


def _problem(exc: msgspec.ValidationError) -> str:
    """A validation error as `field: what is wrong`."""
    text_ = str(exc)
    what, sep, where = text_.rpartition(" - at `$.")
    return f"{where.rstrip('`')}: {what}" if sep else text_


async def _paused(rt: Runtime) -> list[tuple[str, str]]:
    async with rt.pool.acquire() as conn:
        return [(p.tenant_id, p.queue) for p in await db.console.queue_pauses(conn, PAUSES_SHOWN)]


def _overview_context(rt: Runtime, paused: list[tuple[str, str]]) -> dict[str, Any]:
    snap = figures.snapshot(rt)
    samples = list(history.history_of(rt).samples)
    queues = figures.queue_rows(snap, paused)
    tenants = figures.tenant_rows(snap, queues, samples)
    return {
        "snap": snap,
        "tenants": tenants,
        "throughput": figures.throughput_chart(samples),
        "latency": figures.latency_chart(samples),
        "shares": figures.share_chart(tenants),
        "sample_seconds": history.SAMPLE_SECONDS,
        "recent_minutes": figures.RECENT_SECONDS / 60,
        "tenant_labels": not samples or samples[-1].tenants is not None,
    }


def _new_key(tenant_id: str | None) -> tuple[str, str, str]:
    key_id, secret = signing.new_api_key("tk" if tenant_id is not None else "wk")
    return key_id, secret, f"{key_id}.{secret}"


def _following_fires(s: Schedule, n: int) -> list[Any]:
    """The schedule's next `n` fire times from its stored next one; [] when it no longer parses."""
    try:
        spec, tz = parse_cron(s.cron), parse_timezone(s.timezone)
    except ValueError:
        return []
    out = [s.next_fire_at]
    while len(out) < n:
        try:
            out.append(next_fire(spec, out[-1], tz))
        except ValueError:
            break
    return out


class ConsoleController(Controller):
    path = "/ui"
    include_in_schema = False

    # --- session ----------------------------------------------------------------------------

    @get("/login")
    async def login_form(self, request: AnyRequest) -> Response[Any]:
        if signed_in(request):
            return Redirect(path="/ui", status_code=303)
        return page(request, "login.html", message=None)

    @post("/login", status_code=200)
    async def login(self, request: AnyRequest) -> Response[Any]:
        expected = runtime_of(request).settings.admin_token
        form = await request.form()
        sent = form.get("token")
        if expected is None:
            return page(request, "login.html", 200, message="This gateway has no admin token (ORCH_ADMIN_TOKEN).")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
            log.warning("console: sign-in refused: not the admin token")
            return page(request, "login.html", 200, message="That is not the admin token.")
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
    async def logout(self, request: AnyRequest) -> Response[Any]:
        if await form_of(request) is None:
            return forbidden(request)
        response = to_login()
        response.delete_cookie(session.COOKIE, path="/ui")
        return response

    # --- overview ---------------------------------------------------------------------------

    @get("")
    async def overview(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        rt = runtime_of(request)
        return page(request, "overview.html", nav="overview", **_overview_context(rt, await _paused(rt)))

    @get("/overview/fragment")
    async def overview_fragment(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return Response(content="", status_code=401, headers=HEADERS)
        rt = runtime_of(request)
        return page(request, "_overview.html", **_overview_context(rt, await _paused(rt)))

    # --- jobs -------------------------------------------------------------------------------

    @get("/jobs")
    async def jobs(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        return await _job_list(request, "jobs.html", "jobs", dead_only=False)

    @get("/jobs/{job_id:str}")
    async def job(self, request: AnyRequest, job_id: FromPath[str]) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with runtime_of(request).pool.acquire() as conn:
            found = None if jid is None else await db.job_admin_get(conn, jid)
            events = [] if found is None or jid is None else await db.job_events(conn, jid, JOB_EVENTS_SHOWN + 1)
        if found is None:
            return message(request, 404, "Not found", f"No job {job_id}.")
        trace_id = found.traceparent.split("-")[1] if found.traceparent else None
        return page(
            request,
            "job.html",
            nav="jobs",
            job=found,
            events=events[-JOB_EVENTS_SHOWN:],
            events_truncated=len(events) > JOB_EVENTS_SHOWN,
            trace_id=trace_id,
            done=text(request.query_params, "done"),
        )

    @post("/jobs/{job_id:str}/cancel", status_code=200)
    async def cancel(self, request: AnyRequest, job_id: FromPath[str]) -> Response[Any]:
        if await form_of(request) is None:
            return forbidden(request)
        rt = runtime_of(request)
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with rt.pool.acquire() as conn:
            found = None if jid is None else await db.job_admin_get(conn, jid)
            outcome = None if found is None or jid is None else await db.job_cancel(conn, jid, found.tenant_id)
        if outcome is None:
            return message(request, 404, "Not found", f"No job {job_id}.")
        if outcome.changed and outcome.job.state is JobState.CANCELLED:
            rt.metrics.jobs_cancelled.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
        if outcome.changed:
            done = "cancelled" if outcome.job.state is JobState.CANCELLED else "cancel requested"
            log.info("console: job %s %s", jid, done)
        elif outcome.job.state is JobState.RUNNING:
            done = "cancel requested"
        else:
            done = f"a {outcome.job.state} job cannot be cancelled"
        return redirect(f"/ui/jobs/{jid}", done=done)

    @post("/jobs/{job_id:str}/retry", status_code=200)
    async def retry(self, request: AnyRequest, job_id: FromPath[str]) -> Response[Any]:
        if await form_of(request) is None:
            return forbidden(request)
        rt = runtime_of(request)
        jid = parse_uint(job_id, maximum=db.MAX_JOB_ID)
        async with rt.pool.acquire() as conn:
            outcome = None if jid is None else (await db.job_replay_many(conn, [jid], None)).get(jid)
        if outcome is None:
            return message(request, 404, "Not found", f"No job {job_id}.")
        if outcome.changed:
            rt.metrics.jobs_replayed.add(1, rt.metrics.labels(outcome.job.tenant_id, outcome.job.queue))
            log.info("console: job %s replayed", jid)
            done = "replayed"
        else:
            done = f"a {outcome.job.state} job cannot be replayed: only dead or cancelled ones"
        return redirect(f"/ui/jobs/{jid}", done=done)

    # --- dead letters -----------------------------------------------------------------------

    @get("/dead")
    async def dead(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        return await _job_list(request, "dead.html", "dead", dead_only=True)

    @get("/dead/replay")
    async def replay_confirm(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        q = request.query_params
        ids = _ids(q.getall("id", []))
        if ids is None:
            return message(request, 422, "Replay", "id: each must be a job id (digits).")
        if ids:
            if len(ids) > SELECTION_MAX:
                return message(request, 422, "Replay", f"id: pick at most {SELECTION_MAX} jobs at once.")
            return page(request, "replay.html", nav="dead", ids=ids, filter=None, matched=None, exact=True)
        f = {name: text(q, name) for name in ("tenant", "queue", "kind", "error")}
        tenant = f["tenant"]
        if tenant is None:
            return message(request, 422, "Replay", "tenant: pick a tenant (or jobs) to replay.")
        async with runtime_of(request).pool.acquire() as conn:
            found = await db.console.dead_count(
                conn, tenant, f["queue"], f["kind"], f["error"], cap=REPLAY_MAX, window=GROUP_SAMPLE
            )
        return page(
            request,
            "replay.html",
            nav="dead",
            ids=[],
            filter=f,
            matched=found.matched,
            exact=found.exact,
            replay_max=REPLAY_MAX,
            counted=REPLAY_MAX if f["kind"] is None and f["error"] is None else GROUP_SAMPLE,
        )

    @post("/dead/replay", status_code=200)
    async def replay(self, request: AnyRequest) -> Response[Any]:
        form = await form_of(request)
        if form is None:
            return forbidden(request)
        rt = runtime_of(request)
        ids = _ids(form.getall("id", []))
        if ids is None:
            return message(request, 422, "Replay", "id: each must be a job id (digits).")
        if ids:
            ids = ids[:SELECTION_MAX]
            async with rt.pool.acquire() as conn:
                outcomes = await db.job_replay_many(conn, ids, None)
            changed = [o for o in outcomes.values() if o.changed]
            for o in changed:
                rt.metrics.jobs_replayed.add(1, rt.metrics.labels(o.job.tenant_id, o.job.queue))
            log.info("console: replayed %d of %d selected dead job(s)", len(changed), len(ids))
            if len(ids) == 1:
                done = "replayed" if changed else "not replayed: only dead or cancelled jobs can be"
                return redirect(f"/ui/jobs/{ids[0]}", done=done)
            return redirect("/ui/dead", done=f"replayed {len(changed)} of {len(ids)} selected job(s)")
        f = {name: text(form, name) for name in ("tenant", "queue", "kind", "error")}
        tenant = f["tenant"]
        if tenant is None:
            return message(request, 422, "Replay", "tenant: pick a tenant (or jobs) to replay.")
        total, more = await _replay_matching(rt, tenant, f["queue"], f["kind"], f["error"])
        log.info("console: replayed %d dead job(s) of %s matching %s", total, tenant, f)
        done = f"replayed {total} job(s)" + (
            f"; more match: replay again (at most {REPLAY_MAX:,} a time)" if more else ""
        )
        return redirect("/ui/dead", tenant=tenant, queue=f["queue"], kind=f["kind"], done=done)

    # --- queues -----------------------------------------------------------------------------

    @get("/queues")
    async def queues(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        rt = runtime_of(request)
        snap = figures.snapshot(rt)
        rows = figures.queue_rows(snap, await _paused(rt))
        return page(
            request, "queues.html", nav="queues", queues=rows, snap=snap, done=text(request.query_params, "done")
        )

    @post("/queues/pause", status_code=200)
    async def pause(self, request: AnyRequest) -> Response[Any]:
        return await _pause(request, paused=True)

    @post("/queues/resume", status_code=200)
    async def resume(self, request: AnyRequest) -> Response[Any]:
        return await _pause(request, paused=False)

    # --- schedules --------------------------------------------------------------------------

    @get("/schedules")
    async def schedules(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        q = request.query_params
        tenant = text(q, "tenant")
        raw = text(q, "after")
        after = 0 if raw is None else parse_uint(raw, maximum=db.MAX_JOB_ID)
        if after is None:
            return message(request, 422, "Schedules", "after: must be a schedule cursor (digits).")
        async with runtime_of(request).pool.acquire() as conn:
            rows = await db.schedule_admin_list(conn, tenant, after, LIST_SIZE + 1)
        more = len(rows) > LIST_SIZE
        rows = rows[:LIST_SIZE]
        listed = [(s, _following_fires(s, NEXT_FIRES)) for _, s in rows]
        next_url = f"/ui/schedules?{urlencode({'tenant': tenant or '', 'after': rows[-1][0]})}" if more else None
        return page(
            request,
            "schedules.html",
            nav="schedules",
            schedules=listed,
            tenant=tenant,
            next_url=next_url,
            done=text(q, "done"),
        )

    @post("/schedules/pause", status_code=200)
    async def schedule_pause(self, request: AnyRequest) -> Response[Any]:
        return await _schedule_pause(request, paused=True)

    @post("/schedules/resume", status_code=200)
    async def schedule_resume(self, request: AnyRequest) -> Response[Any]:
        return await _schedule_pause(request, paused=False)

    # --- workers ----------------------------------------------------------------------------

    @get("/workers")
    async def workers(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        async with runtime_of(request).pool.acquire() as conn:
            listed = await db.worker_list(conn, text(request.query_params, "tenant"))
        return page(request, "workers.html", nav="workers", workers=listed)

    # --- events -----------------------------------------------------------------------------

    @get("/events")
    async def events(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        rt = runtime_of(request)
        q = request.query_params
        raw = text(q, "after")
        after = 0 if raw is None else parse_uint(raw, maximum=db.MAX_JOB_ID)
        if after is None:
            return message(request, 422, "Events", "after: must be a webhook cursor (digits).")
        async with rt.pool.acquire() as conn:
            hooks = await db.webhook_admin_list(conn, None, after, LIST_SIZE + 1)
        more = len(hooks) > LIST_SIZE
        hooks = hooks[:LIST_SIZE]
        snap = figures.snapshot(rt)
        backlogs = {(b.tenant_id, b.name): b.events for b in (snap.stats.webhook_backlogs if snap.stats else [])}
        return page(
            request,
            "events.html",
            nav="events",
            snap=snap,
            consumers=snap.stats.consumer_lags if snap.stats else [],
            webhooks=[(w, backlogs.get((w.tenant_id, str(w.id)))) for w in hooks],
            cap=100_000,
            next_url=f"/ui/events?after={hooks[-1].id}" if more else None,
            done=text(q, "done"),
        )

    @post("/webhooks/{webhook_id:str}/resume", status_code=200)
    async def webhook_resume(self, request: AnyRequest, webhook_id: FromPath[str]) -> Response[Any]:
        form = await form_of(request)
        if form is None:
            return forbidden(request)
        rt = runtime_of(request)
        wid = parse_uint(webhook_id, maximum=db.MAX_JOB_ID)
        tenant = text(form, "tenant")
        if wid is None or tenant is None:
            return message(request, 422, "Webhooks", "tenant: a tenant and a webhook id are needed.")
        async with rt.pool.acquire() as conn:
            row = await db.webhook_resume(conn, wid, tenant)
        if row is None:
            return message(request, 404, "Not found", f"No webhook {wid} of tenant {tenant}.")
        webhook_publisher.kick(rt)
        log.info("console: webhook %s of %s resumed", wid, tenant)
        return redirect("/ui/events", done=f"webhook {wid} resumed: its next event is retried now")

    # --- tenants ----------------------------------------------------------------------------

    @get("/tenants")
    async def tenants(self, request: AnyRequest) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        rt = runtime_of(request)
        async with rt.pool.acquire() as conn:
            listed = await db.tenant_list(conn)
        running = _running_by_tenant(figures.snapshot(rt))
        return page(
            request,
            "tenants.html",
            nav="tenants",
            tenants=listed,
            running=running,
            done=text(request.query_params, "done"),
            error=None,
            form={},
        )

    @post("/tenants", status_code=200)
    async def tenant_create(self, request: AnyRequest) -> Response[Any]:
        form = await form_of(request)
        if form is None:
            return forbidden(request)
        rt = runtime_of(request)
        fields: dict[str, Any] = {"id": (form.get("id") or "").strip(), "name": (form.get("name") or "").strip()}
        if not fields["name"].isprintable():
            return await _tenants_with_error(request, "name: must hold no control characters", {})
        for name in ("weight", "max_inflight"):
            if value := text(form, name):
                fields[name] = value
        try:
            data = msgspec.convert(fields, TenantCreate, strict=False)
        except msgspec.ValidationError as exc:
            return await _tenants_with_error(request, _problem(exc), fields)
        key_id, secret, api_key = _new_key(data.id)
        async with rt.pool.acquire() as conn, conn.transaction():
            tenant = await db.tenant_insert(conn, data.id, data.name, data.weight, data.max_inflight)
            if tenant is not None:
                await db.api_key_insert(conn, key_id, secret, tenant.id)
        if tenant is None:
            return await _tenants_with_error(request, f"id: tenant {data.id} exists", fields, status=409)
        log.info("console: tenant %s created with key %s", tenant.id, key_id)
        return page(request, "secret.html", nav="tenants", tenant_id=tenant.id, key_id=key_id, api_key=api_key)

    @get("/tenants/{tenant_id:str}")
    async def tenant(self, request: AnyRequest, tenant_id: FromPath[str]) -> Response[Any]:
        if not signed_in(request):
            return to_login()
        rt = runtime_of(request)
        tid = _tenant_id(tenant_id)
        async with rt.pool.acquire() as conn:
            found = None if tid is None else await db.tenant_get(conn, tid)
            keys = [] if found is None else await db.api_key_list(conn, found.id)
        if found is None:
            return message(request, 404, "Not found", f"No tenant {tid or 'of that id'}.")
        return page(
            request,
            "tenant.html",
            nav="tenants",
            tenant=found,
            keys=keys,
            running=_running_by_tenant(figures.snapshot(rt)).get(found.id, 0),
            done=text(request.query_params, "done"),
            error=text(request.query_params, "error"),
        )

    @post("/tenants/{tenant_id:str}", status_code=200)
    async def tenant_edit(self, request: AnyRequest, tenant_id: FromPath[str]) -> Response[Any]:
        form = await form_of(request)
        if form is None:
            return forbidden(request)
        if _tenant_id(tenant_id) is None:
            return message(request, 404, "Not found", "No tenant of that id.")
        name = (form.get("name") or "").strip()
        if not name.isprintable():
            return redirect(f"/ui/tenants/{tenant_id}", error="name: must hold no control characters")
        fields: dict[str, Any] = {
            "name": name,
            "disabled": form.get("enabled") is None,
            "max_inflight": text(form, "max_inflight"),  # empty: no limit
        }
        if weight := text(form, "weight"):
            fields["weight"] = weight
        try:
            data = msgspec.convert(fields, TenantPatch, strict=False)
        except msgspec.ValidationError as exc:
            return redirect(f"/ui/tenants/{tenant_id}", error=_problem(exc))
        async with runtime_of(request).pool.acquire() as conn:
            tenant = await db.tenant_update(
                conn,
                tenant_id,
                name=data.name,
                weight=data.weight,
                max_inflight=data.max_inflight,
                disabled=data.disabled,
            )
        if tenant is None:
            return message(request, 404, "Not found", f"No tenant {tenant_id}.")
        log.info(
            "console: tenant %s set to weight %s, max_inflight %s, %s",
            tenant.id,
            tenant.weight,
            tenant.max_inflight,
            "disabled" if tenant.disabled else "enabled",
        )
        return redirect(f"/ui/tenants/{tenant.id}", done="saved")

    @post("/tenants/{tenant_id:str}/keys", status_code=200)
    async def tenant_key(self, request: AnyRequest, tenant_id: FromPath[str]) -> Response[Any]:
        if await form_of(request) is None:
            return forbidden(request)
        if _tenant_id(tenant_id) is None:
            return message(request, 404, "Not found", "No tenant of that id.")
        key_id, secret, api_key = _new_key(tenant_id)
        async with runtime_of(request).pool.acquire() as conn, conn.transaction():
            if await db.tenant_get(conn, tenant_id) is None:
                return message(request, 404, "Not found", f"No tenant {tenant_id}.")
            await db.api_key_insert(conn, key_id, secret, tenant_id)
        log.info("console: key %s created for tenant %s", key_id, tenant_id)
        return page(request, "secret.html", nav="tenants", tenant_id=tenant_id, key_id=key_id, api_key=api_key)

    @post("/keys/{key_id:str}/revoke", status_code=200)
    async def key_revoke(self, request: AnyRequest, key_id: FromPath[str]) -> Response[Any]:
        form = await form_of(request)
        if form is None:
            return forbidden(request)
        if not _KEY_ID.match(key_id):
            return message(request, 404, "Not found", "No key of that id.")
        async with runtime_of(request).pool.acquire() as conn:
            revoked = await db.api_key_revoke(conn, key_id)
        if not revoked:
            return message(request, 404, "Not found", f"No key {key_id}.")
        log.info("console: key %s revoked", key_id)
        tenant = _tenant_id(text(form, "tenant") or "")
        return redirect(f"/ui/tenants/{tenant}" if tenant else "/ui/tenants", done=f"key {key_id} revoked")

    @post("/worker-keys", status_code=200)
    async def worker_key(self, request: AnyRequest) -> Response[Any]:
        if await form_of(request) is None:
            return forbidden(request)
        key_id, secret, api_key = _new_key(None)
        async with runtime_of(request).pool.acquire() as conn:
            await db.api_key_insert(conn, key_id, secret, None)
        log.info("console: shared worker key %s created", key_id)
        return page(request, "secret.html", nav="tenants", tenant_id=None, key_id=key_id, api_key=api_key)


def _running_by_tenant(snap: figures.Snapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in snap.stats.jobs if snap.stats else ():
        if c.state == "running":
            out[c.tenant_id] = out.get(c.tenant_id, 0) + c.count
    return out


async def _tenants_with_error(
    request: AnyRequest, error: str, form: dict[str, Any], status: int = 422
) -> Response[Any]:
    rt = runtime_of(request)
    async with rt.pool.acquire() as conn:
        listed = await db.tenant_list(conn)
    return page(
        request,
        "tenants.html",
        status,
        nav="tenants",
        tenants=listed,
        running=_running_by_tenant(figures.snapshot(rt)),
        done=None,
        error=error,
        form=form,
    )


async def _replay_matching(
    rt: Runtime, tenant: str, queue: str | None, kind: str | None, error: str | None
) -> tuple[int, bool]:
    """Replay the tenant's dead jobs matching the filter, oldest first, up to REPLAY_MAX; whether
    more may match."""
    total = 0
    after = 0
    more = False
    async with rt.pool.acquire() as conn:
        while True:
            if total >= REPLAY_MAX:
                more = True
                break
            ids = await db.console.dead_ids(
                conn, tenant, queue, kind, error, after_id=after, limit=min(REPLAY_PAGE, REPLAY_MAX - total)
            )
            if not ids:
                break
            # One transaction per page keeps locks short on a large dead-letter queue.
            async with conn.transaction():
                outcomes = await db.job_replay_many(conn, ids, tenant)
            total += sum(1 for o in outcomes.values() if o.changed)
            after = ids[-1]
    if total:
        rt.metrics.jobs_replayed.add(total, rt.metrics.labels(tenant, "*"))
    return total, more


async def _pause(request: AnyRequest, *, paused: bool) -> Response[Any]:
    form = await form_of(request)
    if form is None:
        return forbidden(request)
    tenant, queue = text(form, "tenant"), text(form, "queue")
    if tenant is None or queue is None or not QUEUE_RE.match(queue):
        return message(request, 422, "Queues", "queue: a tenant and a queue name are needed.")
    async with runtime_of(request).pool.acquire() as conn:
        if await db.tenant_get(conn, tenant) is None:
            return message(request, 404, "Not found", f"No tenant {tenant}.")
        if paused:
            await db.queue_pause(conn, tenant, queue)
        else:
            await db.queue_resume(conn, tenant, queue)
    log.info("console: queue %s/%s %s", tenant, queue, "paused" if paused else "resumed")
    return redirect("/ui/queues", done=f"{tenant}/{queue} {'paused' if paused else 'resumed'}")


async def _schedule_pause(request: AnyRequest, *, paused: bool) -> Response[Any]:
    form = await form_of(request)
    if form is None:
        return forbidden(request)
    rt = runtime_of(request)
    tenant, name = text(form, "tenant"), text(form, "name")
    if tenant is None or name is None:
        return message(request, 422, "Schedules", "name: a tenant and a schedule name are needed.")
    async with rt.pool.acquire() as conn, conn.transaction():
        cur = await db.schedule_get(conn, tenant, name, for_update=True)
        if cur is None:
            return message(request, 404, "Not found", f"No schedule {name} of tenant {tenant}.")
        next_fire_at = cur.next_fire_at
        if cur.paused and not paused:
            # As the API's resume: fires missed while paused stay missed, the next counts from now.
            try:
                spec, tz = parse_cron(cur.cron), parse_timezone(cur.timezone)
                next_fire_at = next_fire(spec, await db.schedule_clock(conn), tz)
            except ValueError as exc:
                return message(request, 422, "Schedules", f"cron: {exc}")
        values = db.ScheduleValues(
            name=cur.name,
            cron=cur.cron,
            timezone=cur.timezone,
            queue=cur.queue,
            kind=cur.kind,
            payload=cur.payload,
            priority=cur.priority,
            max_attempts=cur.max_attempts,
            paused=paused,
            next_fire_at=next_fire_at,
        )
        await db.schedule_update(conn, tenant, name, values)
    scheduler.wake(rt)
    log.info("console: schedule %s of %s %s", name, tenant, "disabled" if paused else "enabled")
    return redirect("/ui/schedules", done=f"{tenant}/{name} {'disabled' if paused else 'enabled'}")


async def _job_list(request: AnyRequest, template: str, nav: str, *, dead_only: bool) -> Response[Any]:
    q = request.query_params
    rt = runtime_of(request)
    filters = {name: text(q, name) for name in ("tenant", "queue", "state", "kind", "id", "key")}
    if dead_only:
        filters["state"] = JobState.DEAD.value
        filters["id"] = filters["key"] = None
    errors = []
    jid = before = None
    if filters["state"] is not None and filters["state"] not in _STATES:
        errors.append(f"state: must be one of {', '.join(_STATES)}")
        filters["state"] = None
    if filters["id"] is not None and (jid := parse_uint(filters["id"], maximum=db.MAX_JOB_ID)) is None:
        errors.append("id: must be a job id (digits)")
        filters["id"] = None
    if (raw := text(q, "before")) is not None:
        before = parse_uint(raw, maximum=db.MAX_JOB_ID)
        if before is None:
            errors.append("before: must be a job id (digits)")
    f = db.JobFilter(
        tenant_id=filters["tenant"],
        queue=filters["queue"],
        state=filters["state"],
        kind=filters["kind"],
        job_id=jid,
        idempotency_key=filters["key"],
    )
    # Queue and kind have no index of their own: such a listing reads a window of the index that
    # serves the rest, so a rare match costs a bounded read rather than a scan of the table.
    windowed = (f.queue is not None or f.kind is not None) and f.job_id is None and f.idempotency_key is None
    searched = False
    groups: list[db.console.DeadGroup] = []
    async with rt.pool.acquire() as conn:
        if windowed:
            found = await db.console.job_window(conn, f, before_id=before, limit=PAGE_SIZE + 1, window=JOB_WINDOW)
            jobs = found.jobs
            next_before = int(jobs[PAGE_SIZE - 1].id) if len(jobs) > PAGE_SIZE else (found.low or None)
            searched = len(jobs) <= PAGE_SIZE and found.low > 0
        else:
            jobs = await db.job_admin_list(conn, f, before_id=before, limit=PAGE_SIZE + 1)
            next_before = int(jobs[PAGE_SIZE - 1].id) if len(jobs) > PAGE_SIZE else None
        if dead_only:
            snap = figures.snapshot(rt)
            tenants = len(snap.stats.tenants) if snap.stats else 1
            per_tenant = GROUP_SAMPLE if f.tenant_id else max(50, GROUP_SAMPLE // max(1, tenants))
            groups = await db.console.dead_groups(conn, f.tenant_id, f.queue, per_tenant=per_tenant, limit=GROUPS_SHOWN)
    jobs = jobs[:PAGE_SIZE]
    kept = {k: v for k, v in filters.items() if v is not None and not (dead_only and k == "state")}
    next_url = f"/ui/{nav}?{urlencode({**kept, 'before': next_before})}" if next_before else None
    context: dict[str, Any] = {}
    if dead_only:
        snap = figures.snapshot(rt)
        total = sum(
            r.dead
            for r in figures.queue_rows(snap)
            if (f.tenant_id is None or r.tenant_id == f.tenant_id) and (f.queue is None or r.queue == f.queue)
        )
        context = {"groups": groups, "per_tenant": per_tenant, "dead_total": total, "snap": snap}
    return page(
        request,
        template,
        nav=nav,
        jobs=jobs,
        filters=filters,
        states=_STATES,
        error="; ".join(errors) or None,
        next_url=next_url,
        searched=searched,
        window=JOB_WINDOW,
        done=text(q, "done"),
        **context,
    )
