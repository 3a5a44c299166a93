"""Schema migrations: upgrade, downgrade, and where a database stands."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from ._types import Conn

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(dsn: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["dsn"] = dsn
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(dsn: str, revision: str = "head") -> None:
    """Run migrations up to `revision`. Blocking: call it outside an event loop."""
    command.upgrade(_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(_config(dsn), revision)


async def current_revision(conn: Conn) -> str | None:
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    if not exists:
        return None
    rev: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return rev


def schema_status(current: str | None) -> str | None:
    """None when the schema is at head; otherwise what is wrong and the command that fixes it."""
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return "the database has no orchestrator schema: run `orchestrator migrate` (or `serve --migrate`)"
    if current not in known_revisions():
        return f"the database schema ({current}) is newer than this orchestrator knows (head {head}): upgrade it"
    return f"the database schema ({current}) is older than head ({head}): run `orchestrator migrate`"
