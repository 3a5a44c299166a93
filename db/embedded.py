"""The embedded PostgreSQL (the pgserver wheel): zero set-up for first runs, demos and tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from types import ModuleType


class EmbeddedUnavailable(RuntimeError):
    """The embedded PostgreSQL needs the `embedded` extra."""


def _pgserver() -> ModuleType:
    # pgserver warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise EmbeddedUnavailable(
                "the embedded PostgreSQL is not installed: set DATABASE_URL to a PostgreSQL >= 15, "
                "or install the extra (pip install 'job-orchestrator[embedded]')"
            ) from None
    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server in a data folder, reached over its Unix socket.

    pgserver reference-counts the processes using one data folder and stops the server when
    the last of them exits.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        pgserver = _pgserver()
        with pgserver.PostgresServer._lock:
            _forget_dead_users(data_dir)
        # A server left running by a process that was killed is adopted here, and stopped by
        # the last user's stop() like one this process started.
        self._server = pgserver.get_server(data_dir, cleanup_mode="stop")

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        self._server.cleanup()


HANDLES_FILE = ".handle_pids.json"  # where pgserver counts the processes using a data folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_users(data_dir: Path) -> None:
    """Drop processes that died without saying so (kill -9) from pgserver's count of users, or
    the server would never again be stopped by the last live one."""
    path = data_dir / HANDLES_FILE
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    live = [p for p in pids if isinstance(p, int) and _alive(p)]
    if live != pids:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(live))


def live_users(data_dir: Path) -> list[int]:
    """The live processes that use the embedded server of `data_dir`."""
    try:
        pids = json.loads((data_dir / HANDLES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [p for p in pids if isinstance(p, int) and _alive(p)] if isinstance(pids, list) else []


def running_server_pid(data_dir: Path) -> int | None:
    """The pid of a PostgreSQL server running on `data_dir`, if one is."""
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    pid = int(first) if first.isascii() and first.isdigit() else None
    return pid if pid is not None and _alive(pid) else None


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
