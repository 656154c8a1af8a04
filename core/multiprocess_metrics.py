"""Prometheus metrics of one or many processes on one endpoint, for any of Conveyor's servers.

Several processes of one server (``--workers N``, ``--processes N``) record their values in
prometheus-client's files (multiprocess mode, as MLServer's parallel workers):
``PROMETHEUS_MULTIPROC_DIR`` names a folder, set in each child's environment before it
imports prometheus-client; the parent serves the files, summed, with :func:`serving` and marks
a child that exited dead (its ``livesum`` gauges drop out). One process serves its own registry
the same way. Nothing here knows a worker or a gateway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from conveyor.errors import PortUnavailable

__all__ = ("LATENCY_BUCKETS", "MULTIPROC_VARIABLE", "serving", "start_serving")

logger = logging.getLogger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client at import

# Seconds, for a model call seen from anywhere: sub-millisecond no-op models to generations of
# minutes (the worker's conveyor_worker_run_seconds has the same).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
)  # fmt: skip


def start_serving(
    port: int, host: str, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """Serves ``registry`` on ``host:port`` from a daemon thread, and logs the port bound
    (``metrics.serving address=HOST:PORT``): with port 0 the kernel picks a free one, and
    the log line is how a caller learns it. A failed bind raises :class:`OSError`."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics.serving address=%s:%d", host, server.server_port)
    return server, thread


def _alone(pid: int) -> None:
    """No files: nothing of a child to forget."""


@contextlib.contextmanager
def serving(
    port: int,
    host: str = "0.0.0.0",
    *,
    registry: CollectorRegistry | None = None,
    folder: Path | None = None,
    option: str = "--metrics-port",
) -> Iterator[Callable[[int], None]]:
    """Serves ``http://host:port/metrics`` (any path answers) until the block ends: the
    ``registry`` of this process, or the multiprocess files of ``folder``, summed. Yields what
    to call with the pid of a child that exited (nothing to do without ``folder``). Port 0: a
    free one, logged (:func:`start_serving`). A taken port raises :class:`PortUnavailable`
    (named ``option`` for the user)."""
    mark_dead: Callable[[int], None] = _alone
    if folder is not None:
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
        mark_dead = functools.partial(mark_process_dead, path=str(folder))

    try:
        server, thread = start_serving(port, host, registry or CollectorRegistry())
    except OSError as error:
        raise PortUnavailable(option, port, error, host=host) from error
    try:
        yield mark_dead
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
