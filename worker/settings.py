"""How one worker process runs: :class:`WorkerSettings`."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from conveyor.broker.keys import DEFAULT_PREFIX

__all__ = ("WorkerSettings",)


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass
class WorkerSettings:
    """How one worker process runs. Durations are seconds."""

    redis_url: str
    prefix: str = DEFAULT_PREFIX
    concurrency: int = 16  # jobs run at once; the worker never fetches more than its free slots
    name: str = field(default_factory=_default_name)  # the consumer name, unique in the fleet
    heartbeat_ttl: float = 10.0  # a worker silent this long is taken for dead
    grace_period: float = 30.0  # on SIGTERM, how long in-flight jobs may take to finish
    read_block: float = 1.0  # longest wait of one read; bounds how fast a stop is noticed
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    # Under a supervisor (--processes N): the metrics go to prometheus-client's files there
    # (its PROMETHEUS_MULTIPROC_DIR), which the supervisor serves for all its processes.
    metrics_dir: str | None = None
    health_port: int | None = None  # serve /live and /ready on this port (worker.health)
    health_file: str | None = None  # under a supervisor: where its state goes after each beat
    # gc.freeze() what is alive once the models are loaded, for the worker's life (gc.unfreeze()
    # when run returns): full collections then skip it. Off when the worker shares a process.
    freeze_gc: bool = True
