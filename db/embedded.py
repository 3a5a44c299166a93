"""The embedded PostgreSQL (the pgserver wheel): zero set-up for first runs, demos and tests."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from types import ModuleType


def _pgserver() -> ModuleType:
    # pgserver warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server in a data folder, reached over its Unix socket.

    pgserver reference-counts the processes using one data folder and stops the server when
    the last of them exits.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._server = _pgserver().get_server(data_dir, cleanup_mode="stop")

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        self._server.cleanup()


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL client program: the embedded distribution's, else the system's."""
    bundled = Path(str(_pgserver().__file__)).parent / "pginstall" / "bin" / name
    if bundled.exists():
        return str(bundled)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return found
