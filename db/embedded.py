"""The embedded PostgreSQL (the pgserver wheel): zero set-up for first runs, demos and tests."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def _major(program: str) -> int | None:
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(found.group(1)) if found else None


def pg_bin(name: str, major: int | None = None) -> str:
    """Path of a PostgreSQL client program, of the server's major version when one is given.

    The embedded distribution's comes first; then the Debian layout, then PATH.
    """
    candidates = [
        Path(str(_pgserver().__file__)).parent / "pginstall" / "bin" / name,
        *([Path(f"/usr/lib/postgresql/{major}/bin/{name}")] if major is not None else []),
    ]
    on_path = shutil.which(name)
    if on_path is not None:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.exists() and (major is None or _major(str(path)) == major):
            return str(path)
    raise FileNotFoundError(f"{name} for PostgreSQL {major or 'any version'}")
