"""``conveyor up``: an embedded Redis (unless one is given) and a few workers, until Ctrl-C."""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
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
from conveyor.errors import ConveyorError
from conveyor.worker.supervisor import supervise, worker_argv, worker_env

__all__ = ("run_up",)

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
    model_dirs: Sequence[Path], *, workers: int, redis_url: str | None, prefix: str, log_level: str
) -> int:
    """Runs Redis (embedded unless ``redis_url``) and ``workers`` worker processes until
    Ctrl-C; returns the exit code. Raises ``WorkersCannotStart`` when a model's ``load()``
    keeps raising (everything stopped first)."""
    with _redis(redis_url) as url:
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
