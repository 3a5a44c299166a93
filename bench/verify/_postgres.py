"""A scratch PostgreSQL cluster of its own (initdb + pg_ctl from the embedded distribution), on a
free loopback port in a temporary folder: the one server a check may restart or crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import db

from .._infra import BenchError, free_port

# PostgreSQL refuses to run as root; pgserver runs it as this user then, and so do we.
SYSTEM_USER = "pgserver"
# Only a crash of the processes is simulated: the OS keeps what was written, so fsync can go,
# but every acknowledged commit must be in the WAL (synchronous_commit stays on).
SERVER_OPTIONS = "-c fsync=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB"


class ScratchPostgres:
    def __init__(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="orch-scratch-pg-"))
        self.data = self._tmp / "data"
        self.logfile = self._tmp / "postgres.log"
        self.port = free_port()
        self._user: str | None = None
        self.started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(
            [db.pg_bin(program), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            user=self._user,
            cwd=self._tmp,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise BenchError(
                f"{program} {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}{self.log()}"
            )

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.logfile.read_text(errors="replace")[-4000:]
        return ""

    def start(self) -> None:
        if os.geteuid() == 0:
            with warnings.catch_warnings():  # pgserver warns at import when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(SYSTEM_USER)
            assert entry is not None
            self._user = SYSTEM_USER
            ensure_prefix_permissions(self._tmp)
            os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        self._ctl("start")
        self.started = True

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self._tmp} {SERVER_OPTIONS}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", *extra, action)

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast|immediate`: every connection is cut; immediate is a crash."""
        self._ctl("restart", "-m", mode)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                self._ctl("stop", "-m", "immediate")
            self.started = False
        shutil.rmtree(self._tmp, ignore_errors=True)
