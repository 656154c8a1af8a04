"""``conveyor up``: an embedded Redis (unless one is given), a few workers and one V2 gateway
(REST and gRPC), until Ctrl-C."""

from __future__ import annotations

import contextlib
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from conveyor.broker import (
    FleetView,
    RedisSettings,
    create_sync_client,
    read_fleet_sync,
    translate_errors,
)
from conveyor.broker.keys import DEFAULT_PREFIX, Keys
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError, PortUnavailable
from conveyor.gateway.server import FREE_PORT_HINT, reserve
from conveyor.gateway.settings import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from conveyor.worker.supervisor import supervise, worker_argv, worker_env

__all__ = ("run_up",)

_HOST = "127.0.0.1"  # where up's gateway listens
_EXAMPLE_MODEL = "numpy-linear"  # examples/models: the one the README's first call uses
_EXAMPLE_REQUEST = (
    '{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}'
)


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def _wait_for_workers(
    url: str, prefix: str, count: int, stop: threading.Event, timeout_s: float = 60.0
) -> FleetView:
    """Waits until ``count`` workers have loaded their models (their heartbeats list nothing
    loading), ``stop`` is set, or ``timeout_s`` passed; returns what the live ones said.
    Raises ``BrokerConnectionError`` if Redis fails."""
    settings = RedisSettings.from_url(url)
    client = create_sync_client(settings)
    deadline = time.monotonic() + timeout_s
    keys = Keys(prefix)
    try:
        view = FleetView()
        while not stop.is_set() and time.monotonic() < deadline:
            with translate_errors(settings):
                view = read_fleet_sync(client, keys)
            if sum(1 for w in view.workers if not w.loading) >= count:
                break
            stop.wait(0.2)  # polling: a heartbeat rings no bell
        return view
    finally:
        client.close()


class _Gateway:
    """The ``conveyor gateway`` child of ``up``: its process, and where its REST side is."""

    def __init__(self, process: subprocess.Popen[bytes], http_port: int, grpc_port: int) -> None:
        self.process = process
        self.url = f"http://{_HOST}:{http_port}"
        self.grpc_address = f"{_HOST}:{grpc_port}"

    def wait_ready(self, stop: threading.Event, timeout_s: float = 20.0) -> bool:
        """Whether it answers ``/v2/health/live`` within ``timeout_s`` (False if it exited)."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            stop.wait(0.1)  # polling: nothing rings when it listens
        return False


def _taken(port: int) -> OSError | None:
    """Why ``port`` cannot be listened on, by a plain bind and listen: no ``SO_REUSEPORT``,
    which a gateway still running (an earlier ``conveyor up``) would silently share."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: closed connections in TIME_WAIT are no reason to move
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((_HOST, port))
            probe.listen(1)  # a bound, not listening, socket conflicts only with a listener
        except OSError as error:
            return error
    return None


def _port(held: contextlib.ExitStack, port: int, option: str, default: int) -> int:
    """The gateway's ``port``: 0 picks one; a taken default moves to a free one (said in one
    line), a taken port the user chose is an error. A picked port is held (bound, not
    listening) while the gateway runs, so that the curl line can name it."""
    if port != 0:
        error = _taken(port)
        if error is None:
            return port
        if port != default:
            raise PortUnavailable(option, port, error, host=_HOST, hint=FREE_PORT_HINT)
    picked: int = held.enter_context(reserve(_HOST, 0)).getsockname()[1]
    if port != 0:
        typer.echo(f"conveyor: port {port} is in use; the gateway takes {picked} ({option})")
    return picked


@contextlib.contextmanager
def _gateway(
    url: str, prefix: str, log_level: str, http_port: int, grpc_port: int
) -> Iterator[_Gateway]:
    """A gateway process for the fleet, stopped on the way out (its ports: :func:`_port`)."""
    with contextlib.ExitStack() as held:
        http_port = _port(held, http_port, "--http-port", DEFAULT_HTTP_PORT)
        grpc_port = _port(held, grpc_port, "--grpc-port", DEFAULT_GRPC_PORT)
        argv = [sys.executable, "-P", "-m", "conveyor.cli", "gateway", "--prefix", prefix]
        argv += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        argv += ["--log-level", log_level]
        # its own session, as the workers': Ctrl-C reaches us, and we stop it with SIGTERM
        process = subprocess.Popen(argv, env=worker_env(url), start_new_session=True)
        try:
            yield _Gateway(process, http_port, grpc_port)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _announce_gateway(gateway: _Gateway, served: list[str], stop: threading.Event) -> None:
    if not gateway.wait_ready(stop):
        if not stop.is_set():
            typer.echo("conveyor: the gateway did not start (see the log above)", err=True)
        return
    typer.echo(f"conveyor: V2 gateway: REST at {gateway.url}, gRPC at {gateway.grpc_address}")
    if _EXAMPLE_MODEL in served:
        where = f"{gateway.url}/v2/models/{_EXAMPLE_MODEL}/infer"
        typer.echo(f"  curl -s {where} -d {shlex.quote(_EXAMPLE_REQUEST)}")
    elif served:
        where = f"{gateway.url}/v2/models/{shlex.quote(served[0])}/infer"
        typer.echo(f"  curl -s {where} -d @request.json")


def _announce(view: FleetView, workers: int, url: str, prefix: str) -> None:
    """What the workers serve, and how to call them from another terminal."""
    ready = sum(1 for w in view.workers if not w.loading)
    served = view.ready()
    failed = sorted({name for w in view.workers for name in w.failed} - set(served))
    status = f"{ready} worker(s) ready"
    if ready < workers:
        status = f"only {ready} of {workers} worker(s) ready (see the log)"
    typer.echo(f"conveyor: {status}, serving {', '.join(served) or 'no model'}.")
    if failed:
        typer.echo(f"conveyor: not served, their load() returned False: {', '.join(failed)}")
    if not served:
        return
    settings = RedisSettings.from_url(url)
    shown = settings.redacted_url if settings.password else url  # never print one
    typer.echo("conveyor: Try, in another terminal:")
    typer.echo(f"  export CONVEYOR_REDIS_URL={shlex.quote(shown)}  # Client() reads it")
    # the workers' prefix too, or the line would send to streams nobody reads
    scope = "" if prefix == DEFAULT_PREFIX else f" --prefix {shlex.quote(prefix)}"
    where = f" --redis {shlex.quote(shown)}{scope}"
    if _EXAMPLE_MODEL in served:
        typer.echo(
            f"  conveyor infer {_EXAMPLE_MODEL}{where} --data {shlex.quote(_EXAMPLE_REQUEST)}"
        )
    else:
        typer.echo(f"  conveyor infer {shlex.quote(served[0])}{where} --data @request.json")
        typer.echo("  (request.json: a V2 inference request, as for MLServer)")
    if settings.password:
        typer.echo("  (put the password in place of ***)")


def run_up(
    model_dirs: Sequence[Path],
    *,
    workers: int,
    redis_url: str | None,
    prefix: str,
    log_level: str,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
) -> int:
    """Runs Redis (embedded unless ``redis_url``), ``workers`` worker processes and a gateway
    until Ctrl-C; returns the exit code. Raises ``WorkersCannotStart`` when a model's
    ``load()`` keeps raising (everything stopped first)."""
    with (
        _redis(redis_url) as url,
        _gateway(url, prefix, log_level, http_port, grpc_port) as gateway,
    ):
        args = [str(p) for p in model_dirs] + ["--prefix", prefix]
        args += ["--log-level", log_level]
        typer.echo(f"conveyor: Redis at {RedisSettings.from_url(url).redacted_url}")
        folders = ", ".join(str(p) for p in model_dirs)
        typer.echo(f"conveyor: starting {workers} worker process(es) for {folders}")
        stop = threading.Event()

        def announce() -> None:
            try:
                view = _wait_for_workers(url, prefix, workers, stop)
            except ConveyorError as error:
                typer.echo(f"conveyor: cannot see the workers: {error}", err=True)
                return
            if stop.is_set():
                return
            _announce(view, workers, url, prefix)
            _announce_gateway(gateway, view.ready(), stop)
            typer.echo("conveyor: Ctrl-C stops everything.")

        # The wait runs beside the supervisor, not in it: meanwhile a worker that dies is
        # restarted, and Ctrl-C stops everything at once.
        announcer = threading.Thread(target=announce, name="conveyor-up-announce", daemon=True)
        try:
            return supervise(
                worker_argv(args),
                workers,
                grace_period=10.0,
                on_started=announcer.start,
                env=worker_env(url, workers),
            )
        finally:
            stop.set()
            if announcer.ident is not None:  # started
                announcer.join(timeout=5)
