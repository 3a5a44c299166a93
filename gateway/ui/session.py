"""The console's session: a stateless cookie, an expiry and a nonce signed with the admin token,
and a CSRF token derived from it, so that changing the admin token signs every browser out."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

COOKIE = "orch_ui"
LIFETIME_SECONDS = 12 * 3600


def _mac(admin_token: str, message: str) -> str:
    return hmac.new(admin_token.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(admin_token: str, *, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + LIFETIME_SECONDS)
    body = f"{expires}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(admin_token, 'session:' + body)}"


def valid(admin_token: str | None, cookie: str | None, *, now: float | None = None) -> bool:
    if admin_token is None or not cookie:
        return False
    body, _, mac = cookie.rpartition(".")
    expires, _, _nonce = body.partition(".")
    if not expires.isdigit() or not hmac.compare_digest(mac, _mac(admin_token, "session:" + body)):
        return False
    return int(expires) > (time.time() if now is None else now)


def csrf_token(admin_token: str, cookie: str) -> str:
    return _mac(admin_token, "csrf:" + cookie)


def csrf_ok(admin_token: str, cookie: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent), csrf_token(admin_token, cookie))
