"""The HTTP gateway: the Litestar app, auth, routes, background services, metrics and CLI."""

from .app import create_app

__all__ = ["create_app"]
