"""Signing secrets kept in memory, so a signed request costs one statement."""

from __future__ import annotations


class SecretCache:
    """Key secrets by key id. A secret never changes for its key id, so a cached one is never
    stale; revocation and the tenant's standing are read afresh with every request's nonce."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._secrets: dict[str, str] = {}

    def get(self, key_id: str) -> str | None:
        return self._secrets.get(key_id)

    def put(self, key_id: str, secret: str) -> None:
        if len(self._secrets) >= self._size:
            self._secrets.clear()  # bounded by the live keys; a cold cache costs one lookup each
        self._secrets[key_id] = secret

    def forget(self, key_id: str) -> None:
        self._secrets.pop(key_id, None)
