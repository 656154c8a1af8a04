"""docker-compose.yml and Dockerfile, kept honest without Docker.

The files are parsed and their structure checked; then each service's command runs here, as
compose would run it in its container: the image's ENTRYPOINT (or the service's own) plus the
service's ``command``, image paths mapped back to the repository through the Dockerfile's
COPY lines, the service's ``environment`` with the host ``redis`` resolved to a private server
started from the ``redis`` service's own command. Two worker replicas serve the example
client and the gateway (on free ports here: its published ports are checked against its
command); SIGTERM stops them with exit 0.

The compose commands pass no ``--prefix``: the private server makes the default one safe.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from conveyor.embedded import RedisServer
from tests.support.fleet import GatewayProcess, WorkerProcess

yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml (the dev extra)")

REPO = Path(__file__).parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
REDIS_PORT = 6379  # the port of the redis service's image
WORKER_REPLICAS = 2


# -- the files -------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments) pairs: comments dropped, lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, arguments = whole.partition(" ")
        found.append((name.upper(), arguments.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form is refused (no signals)."""
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(item) for item in value]


class Image:
    """What the Dockerfile builds, as far as the tests need it."""

    def __init__(self, text: str) -> None:
        self.instructions = instructions(text)
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.user: str | None = None
        self.env: dict[str, str] = {}
        self.runs: list[str] = []
        self.install_dir = PurePosixPath("/")  # where `pip install .` runs
        self.installed_from: dict[PurePosixPath, Path] = {}  # ... and what was there
        self.copies: dict[PurePosixPath, Path] = {}  # image path -> repository path
        workdir = PurePosixPath("/")
        for name, arguments in self.instructions:
            if name == "FROM":
                self.base = arguments
            elif name == "WORKDIR":
                workdir = workdir / arguments
            elif name == "ENV":
                for pair in shlex.split(arguments):
                    key, _, value = pair.partition("=")
                    self.env[key] = value
            elif name == "COPY":
                *sources, dest = shlex.split(arguments)
                assert not any(s.startswith("--from") for s in sources), arguments
                target = workdir / dest
                for source in sources:
                    local = REPO / source.rstrip("/")
                    assert local.exists(), f"COPY {source}: no such file in the repository"
                    if local.is_dir():  # a folder's contents go into the destination
                        self.copies[target] = local
                    elif dest.endswith("/"):
                        self.copies[target / local.name] = local
                    else:
                        self.copies[target] = local
            elif name == "RUN":
                self.runs.append(arguments)
                if "pip install" in arguments:  # what it builds from: copied by then
                    self.install_dir = workdir
                    self.installed_from = dict(self.copies)
                for removed in re.findall(r"rm -rf (\S+)", arguments):
                    gone = PurePosixPath(removed)
                    self.copies = {
                        path: local
                        for path, local in self.copies.items()
                        if path != gone and gone not in path.parents
                    }
            elif name == "USER":
                self.user = arguments
            elif name == "ENTRYPOINT":
                self.entrypoint = exec_form(arguments)
            elif name == "CMD":
                self.cmd = exec_form(arguments)

    def local_path(self, path: str) -> str:
        """An absolute path in the image as the repository path it was copied from (any
        other argument unchanged)."""
        if not path.startswith("/"):
            return path
        image_path = PurePosixPath(path)
        for copied, local in self.copies.items():
            if image_path == copied or copied in image_path.parents:
                mapped = local / image_path.relative_to(copied)
                assert mapped.exists(), f"{path} is in no file the image copies"
                return str(mapped)
        raise AssertionError(f"{path} is not in the image: no COPY puts it there")


def durations(text: str) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    assert parts, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def image() -> Image:
    return Image(DOCKERFILE.read_text())


# -- structure -------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_dockerfile(image: Image) -> None:
    assert image.base == "python:3.11-slim"
    assert image.entrypoint == ["conveyor"]
    assert image.cmd == ["--help"]
    assert image.user not in (None, "root", "0")
    assert not str(image.user).startswith(("0:", "root:"))
    # The user is made before it is used, and is not root's uid.
    assert any("useradd" in run and str(image.user) in run for run in image.runs)
    installs = [run for run in image.runs if "pip install" in run]
    assert len(installs) == 1, installs
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", installs[0]), installs[0]
    assert "[" not in installs[0], "no extras in the image: not dev, not embedded"
    # The ENTRYPOINT is the project's script, which is what the tests run as `conveyor`.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["conveyor"] == "conveyor.cli:main"
    # No Redis host is baked into the image.
    assert not any(key.startswith("CONVEYOR_") for key in image.env)
    # The example models are in the image, and the package sources are gone after install.
    assert image.copies[PurePosixPath("/app/examples")] == REPO / "examples"
    assert all(not str(path).startswith("/src") for path in image.copies)


@pytest.mark.timeout(120)
def test_the_image_builds_the_package_from_what_it_copies(image: Image, tmp_path: Path) -> None:
    """The image's `pip install .`, here, from only what the Dockerfile copied by then (a
    package folder it left out once broke the build: pyproject.toml names every one)."""
    source = tmp_path / "src"
    for path, local in image.installed_from.items():
        if image.install_dir in path.parents:
            target = source / path.relative_to(image.install_dir)
            if local.is_dir():
                shutil.copytree(local, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(local, target)
    assert (source / "setup.py").is_file(), "setup.py compiles the image's hot path"
    site = tmp_path / "site"
    # pure Python here (no CONVEYOR_COMPILE): .ci/compiled builds the compiled one
    env = {key: value for key, value in os.environ.items() if key != "CONVEYOR_COMPILE"}
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--target", str(site), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, env=env, timeout=100)
    assert built.returncode == 0, built.stderr
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]:
        installed = site / package.replace(".", "/")
        data = packages["package-data"].get(package)
        if data is not None and not (installed / "__init__.py").exists():  # data only
            assert any(installed.iterdir()), package
        else:
            assert (installed / "__init__.py").is_file(), package


@pytest.mark.timeout(10)
def test_dockerignore_keeps_out_what_the_image_does_not_need(image: Image) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".git", "tests", ".venv", "**/__pycache__", ".mypy_cache", ".pytest_cache"):
        assert needed in patterns, needed
    copied = {local.relative_to(REPO).parts[0] for local in image.copies.values()}
    for name, arguments in image.instructions:
        if name == "COPY":
            copied |= {source.rstrip("/") for source in shlex.split(arguments)[:-1]}
    assert not copied & set(patterns), "the Dockerfile copies something .dockerignore drops"


@pytest.mark.timeout(10)
def test_compose_structure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "gateway", "client"}

    redis_service = services["redis"]
    assert redis_service["image"] == "redis:7.4-alpine"
    command = redis_service["command"]
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    assert "ping" in redis_service["healthcheck"]["test"]
    [volume] = redis_service["volumes"]
    name, _, mount = volume.partition(":")
    assert mount == "/data"
    assert name in compose["volumes"]  # a named volume, not a host folder

    worker = services["worker"]
    assert worker["build"] == "."
    for fixed in ("container_name", "ports", "hostname"):  # each blocks --scale worker=N
        assert fixed not in worker, fixed
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["stop_signal"] == "SIGTERM"
    grace = option(worker["command"], "--grace-period")
    assert grace is not None
    assert durations(worker["stop_grace_period"]) > float(grace)
    assert worker["command"][0] == "worker"

    gateway = services["gateway"]
    assert gateway["image"] == worker["image"]
    assert gateway["build"] == worker["build"]
    command = gateway["command"]
    assert command[0] == "gateway"
    assert option(command, "--host") == "0.0.0.0"
    published = {int(mapping.split(":")[-1]) for mapping in gateway["ports"]}
    ports = (option(command, "--http-port"), option(command, "--grpc-port"))
    assert published == {int(str(port)) for port in ports}
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["stop_signal"] == "SIGTERM"

    client = services["client"]
    assert client["restart"] == "no"  # the string: YAML's bare no is False, which compose refuses
    assert client["depends_on"]["worker"]["condition"] == "service_started"
    assert client["image"] == worker["image"]  # one image, built from the Dockerfile
    assert client["build"] == worker["build"]
    for service in (worker, gateway, client):
        assert "container_name" not in service
        url = service["environment"]["CONVEYOR_REDIS_URL"]
        assert urlsplit(url).hostname == "redis"  # the service, by its name
        assert urlsplit(url).port in (None, REDIS_PORT)
        assert "--redis" not in service.get("command", [])  # from the environment only


# -- the services, run here ------------------------------------------------------------------


def service_argv(image: Image, service: dict[str, Any]) -> list[str]:
    """The process compose starts for ``service``, as a local command line."""
    entrypoint = service.get("entrypoint", image.entrypoint)
    command = service.get("command", image.cmd if "entrypoint" not in service else [])
    argv = [image.local_path(arg) for arg in [*entrypoint, *command]]
    programs = {"conveyor": [sys.executable, "-m", "conveyor.cli"], "python": [sys.executable]}
    assert argv[0] in programs, f"no local stand-in for {argv[0]}"
    return [*programs[argv[0]], *argv[1:]]


def service_env(service: dict[str, Any], redis_url: str) -> dict[str, str]:
    """This process's environment (less Conveyor's variables) plus the service's own, with
    the host ``redis`` resolved to ``redis_url``'s server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    local = urlsplit(redis_url)
    for key, value in service.get("environment", {}).items():
        text = str(value)
        if key == "CONVEYOR_REDIS_URL":
            parts = urlsplit(text)
            assert parts.hostname == "redis", text
            text = urlunsplit(parts._replace(netloc=local.netloc))
        env[key] = text
    return env


@pytest.fixture
def started() -> Iterator[list[WorkerProcess]]:
    """Worker replicas to stop after the test, whatever happened."""
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.stop()


@pytest.mark.timeout(120)
def test_services_run_locally(
    compose: dict[str, Any],
    image: Image,
    redis_server_factory: Callable[..., RedisServer],
    started: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    services = compose["services"]

    # redis: its own command line, on a private loopback port (the volume: a private folder)
    redis_command = services["redis"]["command"]
    server = redis_server_factory(binary=redis_command[0], args=redis_command[1:])
    probe = redis.Redis.from_url(server.url)
    try:
        assert probe.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        probe.close()
    health = services["redis"]["healthcheck"]["test"]
    if health[0] == "CMD" and shutil.which(health[1]):  # inside the container: its own port
        checked = subprocess.run(
            [health[1], "-p", str(server.port), *health[2:]],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert checked.returncode == 0, checked
        assert checked.stdout.strip() == "PONG", checked

    # worker: two replicas, as --scale worker=2 makes them
    worker = services["worker"]
    worker_argv = service_argv(image, worker)
    assert worker_argv[3:5] == ["worker", str(REPO / "examples" / "models")]
    for _ in range(WORKER_REPLICAS):  # each container has its own network: here, a port each
        local = list(worker_argv)
        local[local.index("--health-port") + 1] = "0"  # a free one, read off its log
        started.append(WorkerProcess(local, service_env(worker, server.url)))
    for replica in started:
        replica.wait_for_log("worker.started")
    health_ports = [replica.health_port() for replica in started]
    # its healthcheck, as Docker runs it inside each container
    check = [str(arg) for arg in worker["healthcheck"]["test"]]
    assert check[:2] == ["CMD", "python"], check
    for port in health_ports:
        command = [sys.executable, *(a.replace(":8090/", f":{port}/") for a in check[2:])]
        healthy = subprocess.run(command, timeout=10, capture_output=True).returncode
        assert healthy == 0, f"the worker's healthcheck failed on port {port}"

    # gateway: its command, on loopback and free ports (the test's machine is no container)
    gateway_service = services["gateway"]
    local = service_argv(image, gateway_service)
    for name, value in (("--host", "127.0.0.1"), ("--http-port", "0"), ("--grpc-port", "0")):
        local[local.index(name) + 1] = value
    gateway = GatewayProcess(local, service_env(gateway_service, server.url))
    started.append(gateway)
    gateway.wait_started()

    # client: one shot, exit 0, a prediction and a streamed answer in its output
    client = services["client"]
    result = subprocess.run(
        service_argv(image, client),
        capture_output=True,
        text=True,
        timeout=90,
        env=service_env(client, server.url),
        cwd=tmp_path,  # the image's paths, not the working directory, find its files
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "predict numpy-linear: x=[[1.0, 2.0]] -> y=[[5.5]]" in lines, result.stdout
    assert "predict_stream token-streamer: STREAMS KEEP THEIR ORDER TOKEN BY TOKEN" in lines, (
        result.stdout
    )
    assert any(line.startswith("100 concurrent predict calls: 100 correct") for line in lines)

    # the compose file's curl line, through the gateway
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    answer = httpx.post(f"{gateway.http_url}/v2/models/numpy-linear/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [5.5]

    # `docker compose exec worker conveyor inspect`: both replicas registered
    inspect = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "inspect", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=service_env(worker, server.url),
    )
    assert inspect.returncode == 0, inspect.stderr
    document = json.loads(inspect.stdout)
    replicas = [process for process in started if process is not gateway]
    assert sorted(w["pid"] for w in document["workers"]) == sorted(r.pid for r in replicas)
    served = {m["name"] for m in document["models"]}
    assert {"numpy-linear", "token-streamer"} <= served

    # docker compose stop: stop_signal to each replica, exit 0 well within stop_grace_period
    grace = durations(worker["stop_grace_period"])
    for replica in replicas:
        replica.signal(getattr(signal, worker["stop_signal"]))
    for replica in replicas:
        assert replica.wait(timeout=grace) == 0, replica.log()
        replica.wait_for_log("worker.stopped")
    gateway.signal(getattr(signal, gateway_service["stop_signal"]))
    assert gateway.wait(timeout=durations(gateway_service["stop_grace_period"])) == 0, gateway.log()
