"""The HTTP gateway: the Litestar app, auth, routes, background services, metrics and CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app


def __getattr__(name: str) -> Any:
    # Imported when first asked for, so that `orchestrator <admin command>` starts without
    # loading the server (Litestar, SQLAlchemy, Alembic).
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)


__all__ = ["create_app"]
