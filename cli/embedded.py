"""``conveyor up``: an embedded Redis (unless one is given) and a few workers, until Ctrl-C."""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from conveyor.broker.connection import RedisSettings, create_sync_client
from conveyor.broker.keys import Keys
from conveyor.broker.server import RedisServer
from conveyor.worker.supervisor import supervise, worker_argv

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


def _wait_for_workers(url: str, prefix: str, count: int, timeout_s: float = 60.0) -> int:
    """Waits until ``count`` workers have registered (or the timeout); returns how many did."""
    client = create_sync_client(RedisSettings.from_url(url))
    deadline = time.monotonic() + timeout_s
    try:
        seen = 0
        while time.monotonic() < deadline:
            seen = int(client.zcount(Keys(prefix).workers(), time.time() - 60, "+inf"))
            if seen >= count:
                break
            time.sleep(0.2)
        return seen
    finally:
        client.close()


def run_up(
    model_dirs: Sequence[Path], *, workers: int, redis_url: str | None, prefix: str, log_level: str
) -> int:
    with _redis(redis_url) as url:
        args = [str(p) for p in model_dirs] + ["--redis", url, "--prefix", prefix]
        args += ["--log-level", log_level]
        typer.echo(f"conveyor: Redis at {RedisSettings.from_url(url).redacted_url}")
        folders = ", ".join(str(p) for p in model_dirs)
        typer.echo(f"conveyor: starting {workers} worker process(es) for {folders}")

        def announce() -> None:
            ready = _wait_for_workers(url, prefix, workers)
            typer.echo(f"conveyor: {ready} worker(s) ready. Try, in another terminal:")
            typer.echo(
                f"  conveyor infer numpy-linear --redis {shlex.quote(url)} "
                f"--data {shlex.quote(_EXAMPLE_REQUEST)}"
            )
            typer.echo("conveyor: Ctrl-C stops everything.")

        return supervise(worker_argv(args), workers, grace_period=10.0, on_started=announce)
