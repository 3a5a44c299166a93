"""Running plain SQL scripts inside Alembic revisions."""

from __future__ import annotations

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
