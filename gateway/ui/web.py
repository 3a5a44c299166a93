"""What every console page shares: the templates and their filters, the session checks, forms
with their CSRF token, and the answers (a page, a redirect, a refusal)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import msgspec
from litestar import Request, Response
from litestar.datastructures import FormMultiDict
from litestar.response import Redirect

from ..auth import runtime_of
from . import session

HEADERS = {
    # Every script and style is a file of the package: nothing inline, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

AnyRequest = Request[Any, Any, Any]
NONE = "\u2013"  # an en dash: no figure


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def duration(seconds: float | None) -> str:
    """A latency: milliseconds below a second."""
    if seconds is None:
        return NONE
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.1f} s" if seconds < 120 else age(seconds)


def count(n: float | None) -> str:
    return NONE if n is None else f"{n:,.0f}"


def rate(per_second: float | None) -> str:
    """A rate, per second or per minute, whichever reads better."""
    if per_second is None:
        return NONE
    if per_second == 0 or per_second >= 1:
        return f"{per_second:,.1f}/s"
    return f"{per_second * 60:,.1f}/min"


def percent(share: float | None) -> str:
    return NONE if share is None else f"{share * 100:.0f}%"


def _since(at: datetime | None) -> str:
    if at is None:
        return ""
    seconds = (datetime.now(UTC) - at).total_seconds()
    return f"{age(abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
env.filters.update(
    when=when, pretty=pretty, age=age, duration=duration, count=count, rate=rate, percent=percent, since=_since
)


def cookie_of(request: AnyRequest) -> str | None:
    return request.cookies.get(session.COOKIE)


def signed_in(request: AnyRequest) -> bool:
    return session.valid(runtime_of(request).settings.admin_token, cookie_of(request))


def page(request: AnyRequest, template: str, status: int = 200, **context: Any) -> Response[str]:
    rt = runtime_of(request)
    cookie = cookie_of(request)
    token = rt.settings.admin_token
    csrf = session.csrf_token(token, cookie) if token is not None and cookie and session.valid(token, cookie) else ""
    html = env.get_template(template).render(csrf=csrf, **context)
    return Response(content=html, status_code=status, media_type="text/html", headers=HEADERS)


def message(request: AnyRequest, status: int, title: str, text: str) -> Response[str]:
    return page(request, "message.html", status, title=title, message=text)


def to_login() -> Response[Any]:
    return Redirect(path="/ui/login", status_code=303)


def text(q: Mapping[str, Any], name: str) -> str | None:
    """A field's value: None when empty; names never hold NUL or control characters."""
    value = q.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and value.isprintable() else None


async def form_of(request: AnyRequest) -> FormMultiDict | None:
    """The posted fields when the CSRF token matches the session's; None when it does not."""
    token = runtime_of(request).settings.admin_token
    cookie = cookie_of(request)
    if token is None or not session.valid(token, cookie) or cookie is None:
        return None
    form = await request.form()
    sent = form.get("csrf")
    return form if session.csrf_ok(token, cookie, sent if isinstance(sent, str) else None) else None


def forbidden(request: AnyRequest) -> Response[str]:
    return message(request, 403, "Forbidden", "The form was stale or not this session's: reload it.")


def redirect(path: str, **query: str | None) -> Response[Any]:
    kept = {k: v for k, v in query.items() if v}
    return Redirect(path=path + (f"?{urlencode(kept)}" if kept else ""), status_code=303)
