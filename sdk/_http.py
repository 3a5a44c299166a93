"""Signed HTTP transport: one pooled aiohttp session, msgspec bodies, problem+json errors."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
from yarl import URL

from core.signing import sign_headers, split_api_key
from core.wire import AckComplete, Problem

from ._errors import (
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    InvalidRequest,
    NotFound,
    TransportError,
    Unauthorized,
    Unavailable,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0

_encoder = msgspec.json.Encoder()
_problem = msgspec.json.Decoder(Problem)

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: InvalidRequest,
    422: InvalidRequest,
}

Query = Mapping[str, str | int | None]


def body_of(request: msgspec.Struct) -> bytes:
    """Encode a request struct, leaving out fields that are None (the server's defaults apply)."""
    return _encoder.encode(_without_none(request))


def patch_body_of(request: msgspec.Struct) -> bytes:
    """Encode a patch: None leaves a field out, except where the field's default is UNSET,
    there None is sent as null (it clears the value) and UNSET leaves it out."""
    clearable = {f.name for f in msgspec.structs.fields(request) if f.default is msgspec.UNSET}
    return _encoder.encode(
        {
            name: v
            for name in request.__struct_fields__
            if (v := getattr(request, name)) is not msgspec.UNSET and (v is not None or name in clearable)
        }
    )


def _false_by_default(cls: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f.name for f in msgspec.structs.fields(cls) if f.default is False)


_FALSE_BY_DEFAULT: dict[type[msgspec.Struct], frozenset[str]] = {}


def _without_none(value: Any) -> Any:
    # Only structs and lists of structs are walked: payloads and results go out untouched.
    if isinstance(value, msgspec.Struct):
        cls = type(value)
        # A flag left at False is left out too, so older servers never see fields they lack.
        flags = _FALSE_BY_DEFAULT.get(cls)
        if flags is None:
            flags = _FALSE_BY_DEFAULT[cls] = _false_by_default(cls)
        return {
            name: _without_none(v)
            for name in value.__struct_fields__
            if (v := getattr(value, name)) is not None and v is not msgspec.UNSET and not (v is False and name in flags)
        }
    if isinstance(value, list) and value and isinstance(value[0], msgspec.Struct):
        return [v if _as_is(v) else _without_none(v) for v in value]
    return value


def _as_is(value: msgspec.Struct) -> bool:
    # A completed item whose result is already encoded (what the runner sends, one per job) has
    # no field to leave out: msgspec encodes it to the same bytes, without the walk.
    return type(value) is AckComplete and type(value.result) is msgspec.Raw


def query_string(query: Query | None) -> str:
    """`a=1&b=x`, every byte outside the unreserved set percent-encoded."""
    if not query:
        return ""
    return "&".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in query.items() if v is not None)


def job_path(job_id: str, action: str = "") -> str:
    """`/v1/jobs/{id}[/action]`, the id percent-encoded so the URL and its signature stay well-formed."""
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


def add_trace_context(headers: dict[str, str]) -> None:
    """Add the active OpenTelemetry span's context (W3C `traceparent`), so that a submit continues
    the caller's trace into the gateway and its workers. OpenTelemetry is optional: where nothing
    has imported it, no span can be active, and nothing is imported here either."""
    if "opentelemetry.trace" not in sys.modules:
        return
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; callers fall back to their own backoff


def _error(status: int, raw: bytes, headers: Mapping[str, str]) -> ApiError:
    try:
        p = _problem.decode(raw)
        detail, field, title, type_ = p.detail, p.field, p.title, p.type
    except msgspec.MsgspecError:
        detail, field, title, type_ = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", None, "", ""
    if status in (429, 502, 503, 504):  # 502 and 504: a proxy in front of the gateway
        return Unavailable(
            status, detail, field=field, title=title, type=type_, retry_after=_retry_after(headers.get("Retry-After"))
        )
    return _BY_STATUS.get(status, ApiError)(status, detail, field=field, title=title, type=type_)


class Transport:
    """Sends signed requests to one gateway. Create and use it inside one running event loop."""

    def __init__(self, url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        split_api_key(api_key)  # fail early on a malformed key
        self._api_key = api_key
        self._setup(url, timeout)

    def _setup(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        return sign_headers(self._api_key, method, path_qs, body)

    async def _send(
        self, method: str, path: str, *, query: Query | None, body: bytes, timeout: float | None
    ) -> tuple[int, bytes]:
        qs = query_string(query)
        path_qs = f"{self._prefix}{path}?{qs}" if qs else f"{self._prefix}{path}"
        headers = self._headers(method, path_qs, body)
        headers["Accept"] = "application/json"
        add_trace_context(headers)
        if body:
            headers["Content-Type"] = "application/json"
        session = self._get_session()
        try:
            # encoded=True: yarl would otherwise normalise escapes (%3A -> :) and break the signature.
            async with session.request(
                method,
                URL(self._origin + path_qs, encoded=True),
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout, sock_connect=CONNECT_TIMEOUT_S),
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise _error(status, raw, resp_headers)
        return status, raw

    async def request(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[T],
        *,
        query: Query | None = None,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> T:
        status, raw = await self._send(method, path, query=query, body=body, timeout=timeout)
        try:
            return decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise ApiError(status, f"unexpected response body: {exc}") from exc

    async def request_empty(self, method: str, path: str, *, body: bytes = b"") -> None:
        """A request answered without a body (204)."""
        await self._send(method, path, query=None, body=body, timeout=None)


class BearerTransport(Transport):
    """Sends requests with the operator's bearer token instead of a signature (`/v1/admin`)."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not token or any(c.isspace() for c in token):
            raise ValueError("the admin token must be a non-empty string without white space")
        self._token = token
        self._setup(url, timeout)

    def _headers(self, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}
