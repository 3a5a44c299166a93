"""The client installs alone: a wheel of the project, installed without extras into a fresh
virtual environment, brings msgspec, aiohttp and cronsim and nothing of the server, and its
`orchestrator-worker` runs jobs against a real gateway."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .support import Api, InProcessGateway, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HANDLER = """
async def double(payload):
    return {"twice": payload["n"] * 2}
"""


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=240, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH; it builds the wheel and the client-only environment (pip install uv)")
    root = tmp_path_factory.mktemp("client")
    built = _run(uv, "build", "--wheel", "--out-dir", str(root / "dist"), cwd=Path(__file__).parent.parent)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    plain = sorted(r.split(":", 1)[1].strip() for r in requires if "extra ==" not in r)
    assert plain == ["aiohttp==3.14.5", "cronsim==2.8", "msgspec==0.22.0"], plain
    venv = root / "venv"
    made = _run(uv, "venv", "--python", sys.executable, str(venv))
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(uv, "pip", "install", "--python", str(python), str(wheel))
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_client_alone_has_nothing_of_the_server(client_venv: Path) -> None:
    python = str(client_venv / "bin" / "python")
    probe = (
        "import importlib.util, sdk, core\n"
        "missing = [m for m in ('asyncpg', 'litestar', 'sqlalchemy', 'alembic', 'uvicorn', 'pgserver')"
        " if importlib.util.find_spec(m) is not None]\n"
        "print('present:', missing)"
    )
    done = _run(python, "-c", probe)
    assert done.returncode == 0 and done.stdout.strip() == "present: []", done
    server = _run(str(client_venv / "bin" / "orchestrator"), "serve")
    assert server.returncode == 2, server
    assert server.stderr.count("\n") == 1 and "job-orchestrator[server]" in server.stderr, server.stderr
    assert "Traceback" not in server.stderr


async def test_the_client_alone_runs_a_worker(
    client_venv: Path, api: Api, gateway: InProcessGateway, tmp_path: Path
) -> None:
    key = await api.tenant("client-only")
    job = (await api.signed(key, "POST", "/v1/jobs", {"payload": {"n": 21}})).body
    (tmp_path / "client_handlers.py").write_text(HANDLER)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
        "PYTHONPATH": str(tmp_path),
        "ORCH_URL": gateway.url,
        "ORCH_API_KEY": key,
    }
    worker = subprocess.Popen(
        [str(client_venv / "bin" / "orchestrator-worker"), "client_handlers:double", "--log-format", "text"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def done() -> dict[str, object] | None:
            r = await api.signed(key, "GET", f"/v1/jobs/{job['id']}")
            return r.body if r.body["state"] == "succeeded" else None

        finished = await eventually(done, timeout=60, every=0.2)
    finally:
        worker.terminate()
        out, _ = await asyncio.to_thread(worker.communicate, timeout=30)
    assert finished["result"] == {"twice": 42}, out


def test_the_server_without_the_embedded_extra_says_what_to_do(client_venv: Path, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None
    (wheel,) = (client_venv.parent / "dist").glob("*.whl")
    venv = tmp_path / "server"
    assert _run(uv, "venv", "--python", sys.executable, str(venv)).returncode == 0
    installed = _run(uv, "pip", "install", "--python", str(venv / "bin" / "python"), f"{wheel}[server]")
    assert installed.returncode == 0, installed.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV")}
    env["ORCH_DATA_DIR"] = str(tmp_path / "data")
    done = _run(str(venv / "bin" / "orchestrator"), "serve", env=env)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "DATABASE_URL" in done.stderr and "[embedded]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
