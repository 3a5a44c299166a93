"""Creating and dropping whole databases: for tests, the schema dump and the benchmark."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ._types import Conn


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def with_database(dsn: str, database: str) -> str:
    """The same server address, another database (works for Unix-socket URLs too)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def database_create(conn: Conn, name: str, template: str | None = None) -> None:
    tail = f" TEMPLATE {_ident(template)}" if template else ""
    await conn.execute(f"CREATE DATABASE {_ident(name)}{tail}")


async def database_drop(conn: Conn, name: str) -> None:
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
