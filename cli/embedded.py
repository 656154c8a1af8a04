"""``conveyor up``: an embedded Redis (unless one is given) and a few workers, until Ctrl-C."""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from conveyor.broker.connection import RedisSettings, create_sync_client, translate_errors
from conveyor.broker.keys import DEFAULT_PREFIX, Keys
from conveyor.broker.server import RedisServer
from conveyor.errors import ConveyorError
from conveyor.worker.supervisor import supervise, worker_argv, worker_env

__all__ = ("run_up",)

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
) -> int:
    """Waits until ``count`` workers have registered, ``stop`` is set, or ``timeout_s``
    passed; returns how many did. Raises ``BrokerConnectionError`` if Redis fails."""
    settings = RedisSettings.from_url(url)
    client = create_sync_client(settings)
    deadline = time.monotonic() + timeout_s
    try:
        seen = 0
        while not stop.is_set() and time.monotonic() < deadline:
            with translate_errors(settings):
                seen = int(client.zcount(Keys(prefix).workers(), time.time() - 60, "+inf"))
            if seen >= count:
                break
            stop.wait(0.2)  # polling: registration rings no bell
        return seen
    finally:
        client.close()


def run_up(
    model_dirs: Sequence[Path], *, workers: int, redis_url: str | None, prefix: str, log_level: str
) -> int:
    with _redis(redis_url) as url:
        args = [str(p) for p in model_dirs] + ["--prefix", prefix]
        args += ["--log-level", log_level]
        typer.echo(f"conveyor: Redis at {RedisSettings.from_url(url).redacted_url}")
        folders = ", ".join(str(p) for p in model_dirs)
        typer.echo(f"conveyor: starting {workers} worker process(es) for {folders}")
        stop = threading.Event()

        def announce() -> None:
            try:
                ready = _wait_for_workers(url, prefix, workers, stop)
            except ConveyorError as error:
                typer.echo(f"conveyor: cannot see the workers: {error}", err=True)
                return
            if stop.is_set():
                return
            status = f"{ready} worker(s) ready"
            if ready < workers:
                status = f"only {ready} of {workers} worker(s) ready (see the log)"
            typer.echo(f"conveyor: {status}. Try, in another terminal:")
            # the workers' prefix too, or the line would send to streams nobody reads
            scope = "" if prefix == DEFAULT_PREFIX else f" --prefix {shlex.quote(prefix)}"
            settings = RedisSettings.from_url(url)
            shown = settings.redacted_url if settings.password else url  # never print one
            typer.echo(
                f"  conveyor infer numpy-linear --redis {shlex.quote(shown)}{scope} "
                f"--data {shlex.quote(_EXAMPLE_REQUEST)}"
            )
            if settings.password:
                typer.echo("  (put the password in place of ***)")
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
                env=worker_env(url),
            )
        finally:
            stop.set()
            if announcer.ident is not None:  # started
                announcer.join(timeout=5)
