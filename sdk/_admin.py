"""The operator's side of the API (`/v1/admin`): tenants, keys, reaping, replay, queues."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self
from urllib.parse import quote

import msgspec

from core.wire import (
    ApiKey,
    QueueState,
    Reaped,
    Replay,
    Replayed,
    Tenant,
    TenantCreate,
    TenantCreated,
    TenantList,
    TenantPatch,
)

from ._http import DEFAULT_TIMEOUT_S, BearerTransport, body_of, patch_body_of

_tenant = msgspec.json.Decoder(Tenant)
_tenant_created = msgspec.json.Decoder(TenantCreated)
_tenants = msgspec.json.Decoder(TenantList)
_api_key = msgspec.json.Decoder(ApiKey)
_reaped = msgspec.json.Decoder(Reaped)
_replayed = msgspec.json.Decoder(Replayed)
_queue_state = msgspec.json.Decoder(QueueState)


def _seg(value: str) -> str:
    return quote(value, safe="")


class AdminClient:
    """Acts as the operator, with the server's admin token (`ORCH_ADMIN_TOKEN`) as a bearer
    token. Keep that token off shared machines: it creates tenants and keys."""

    def __init__(self, url: str, *, admin_token: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._http = BearerTransport(url, admin_token, timeout=timeout)

    # --- tenants ---------------------------------------------------------------------------

    async def create_tenant(
        self, tenant_id: str, *, name: str = "", weight: int = 1, max_inflight: int | None = None
    ) -> TenantCreated:
        """Create a tenant and its first API key (in `api_key`, shown this once). Conflict
        when the tenant exists."""
        req = TenantCreate(id=tenant_id, name=name, weight=weight, max_inflight=max_inflight)
        return await self._http.request("POST", "/v1/admin/tenants", _tenant_created, body=body_of(req))

    async def tenants(self) -> list[Tenant]:
        return (await self._http.request("GET", "/v1/admin/tenants", _tenants)).tenants

    async def tenant(self, tenant_id: str) -> Tenant:
        return await self._http.request("GET", f"/v1/admin/tenants/{_seg(tenant_id)}", _tenant)

    async def update_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        weight: int | None = None,
        max_inflight: int | msgspec.UnsetType | None = msgspec.UNSET,
        disabled: bool | None = None,
    ) -> Tenant:
        """Change the fields given; the others stay. `max_inflight=None` removes the cap;
        `disabled=True` refuses the tenant's keys until enabled again."""
        req = TenantPatch(name=name, weight=weight, max_inflight=max_inflight, disabled=disabled)
        return await self._http.request(
            "PATCH", f"/v1/admin/tenants/{_seg(tenant_id)}", _tenant, body=patch_body_of(req)
        )

    # --- keys ------------------------------------------------------------------------------

    async def create_key(self, tenant_id: str) -> str:
        """Another API key for the tenant (`<key_id>.<secret>`, shown this once), for rotation."""
        path = f"/v1/admin/tenants/{_seg(tenant_id)}/keys"
        return (await self._http.request("POST", path, _api_key)).api_key

    async def create_worker_key(self) -> str:
        """A shared worker key: it leases the jobs of every tenant, fair-shared by weight."""
        return (await self._http.request("POST", "/v1/admin/worker-keys", _api_key)).api_key

    async def revoke_key(self, key: str) -> None:
        """Revoke a key at once, given its id or the whole key (only the id is sent)."""
        key_id = key.partition(".")[0]
        await self._http.request_empty("DELETE", f"/v1/admin/keys/{_seg(key_id)}")

    # --- operations ------------------------------------------------------------------------

    async def reap(self) -> int:
        """Recover expired leases now; the number of jobs put back."""
        return (await self._http.request("POST", "/v1/admin/reap", _reaped)).requeued

    async def replay(
        self, tenant_id: str, *, ids: Sequence[str] | None = None, queue: str | None = None, limit: int = 1000
    ) -> int:
        """Send a tenant's dead jobs back to `ready`: the ones named by `ids`, else up to `limit`
        of its dead-letter queue (of one `queue`, when given). The number replayed."""
        req = Replay(tenant_id=tenant_id, ids=None if ids is None else list(ids), queue=queue, limit=limit)
        return (await self._http.request("POST", "/v1/admin/replay", _replayed, body=body_of(req))).replayed

    async def pause_queue(self, tenant_id: str, queue: str) -> QueueState:
        path = f"/v1/admin/tenants/{_seg(tenant_id)}/queues/{_seg(queue)}/pause"
        return await self._http.request("POST", path, _queue_state)

    async def resume_queue(self, tenant_id: str, queue: str) -> QueueState:
        path = f"/v1/admin/tenants/{_seg(tenant_id)}/queues/{_seg(queue)}/resume"
        return await self._http.request("POST", path, _queue_state)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
