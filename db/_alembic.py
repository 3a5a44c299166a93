"""Running plain SQL scripts inside Alembic revisions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only


def run_script(sql: str) -> None:
    """Run a multi-statement script on the migration's connection, in its transaction.

    asyncpg prepares what SQLAlchemy sends, and a prepared statement holds one command, so
    the script goes to the driver's simple-query path instead.
    """
    raw = op.get_bind().connection.driver_connection
    if raw is None:
        raise RuntimeError("the migration has no database connection")
    await_only(raw.execute(sql))


def earlier_function(revision: Path, name: str) -> str:
    """Function `name` exactly as the revision file's UPGRADE script created it, as CREATE OR
    REPLACE: what a later revision's downgrade puts back."""
    spec = importlib.util.spec_from_file_location(f"_rev_{revision.stem}", revision)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"migration {revision} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.UPGRADE
    start = text.index("FUNCTION " + name + "(")
    end = text.index("$$;", text.index("AS $$", start) + 5) + 3
    return "CREATE OR REPLACE " + text[start:end] + "\n"
