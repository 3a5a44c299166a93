"""The operator's web console at /ui: pages rendered by the gateway, its assets served with them."""

from __future__ import annotations

from pathlib import Path

from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from .pages import ConsoleController

STATIC = Path(__file__).parent / "static"

UI_ROUTES: list[ControllerRouterHandler] = [
    ConsoleController,
    create_static_files_router(path="/ui/static", directories=[STATIC], name="ui-static"),
]

__all__ = ["UI_ROUTES"]
