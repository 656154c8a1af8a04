"""``--processes N``: N worker processes, each restarted with backoff when it dies.

A child whose model's ``load()`` raised writes a report (``--failure-report``: the model,
the error, the traceback) before it exits. The supervisor prints each different failure
once, traceback included, and gives up after :data:`MAX_FAILED_STARTS` such starts in a
row of one child (:class:`WorkersCannotStart`): a model that does not load will not load
on the next try either, and restarting it forever only floods the terminal.

With ``metrics_port``, the children write their metrics to prometheus-client's files
(multiprocess mode, as MLServer's parallel workers: ``PROMETHEUS_MULTIPROC_DIR``, a folder of
the supervisor's, empty at start and removed at stop) and the supervisor serves them, summed,
on one ``/metrics``; a child that exits is marked dead there (its live gauges drop out, its
counters stay: totals never go back).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from conveyor.errors import WorkersCannotStart
from conveyor.multiprocess_metrics import serving
from conveyor.worker.health import children_ready, serving_health

__all__ = ("MAX_FAILED_STARTS", "WorkersCannotStart", "supervise", "worker_argv", "worker_env")

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0
_STABLE_S = 10.0  # a child that lived this long resets its backoff
MAX_FAILED_STARTS = 3  # a child's failed loads in a row before the supervisor gives up


_MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class _Child:
    def __init__(
        self,
        index: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        report: Path,
        metrics_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.report = report
        self.health = report.with_suffix(".health")  # its state after each heartbeat
        self.argv = [*argv, "--failure-report", str(report), "--health-file", str(self.health)]
        self.env = dict(env) if env is not None else None
        if metrics_dir is not None:
            # prometheus-client picks its multiprocess values at import, from the environment
            self.env = {**(self.env if self.env is not None else os.environ)}
            self.env[_MULTIPROC_VARIABLE] = str(metrics_dir)
            self.argv += ["--metrics-dir", str(metrics_dir)]
        self.backoff = 0.5
        self.restart_at = 0.0
        self.started = 0.0
        self.failed_starts = 0  # in a row: starts that ended in a failure report
        self.process: subprocess.Popen[bytes] | None = None

    def failure(self) -> dict[str, str] | None:
        """The report of a load that failed in the process that just exited, if any."""
        try:
            document = json.loads(self.report.read_text())
        except (OSError, ValueError):
            return None
        finally:
            self.report.unlink(missing_ok=True)
        return document if isinstance(document, dict) else None

    def running_pid(self) -> int | None:
        """Its pid while it runs (read by other threads: never reaps it)."""
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        self.report.unlink(missing_ok=True)
        # Own session, as RedisServer's child: a terminal's Ctrl-C (sent to the whole
        # foreground group) reaches only us, and we stop each child with one SIGTERM. A
        # child that got the SIGINT too would close its signal receiver and die on our
        # SIGTERM, without draining its jobs or unregistering.
        self.process = subprocess.Popen(self.argv, start_new_session=True, env=self.env)
        self.started = time.monotonic()
        logger.info("supervisor.started child=%d pid=%d", self.index, self.process.pid)


def supervise(
    child_argv: Sequence[str],
    processes: int,
    grace_period: float,
    on_started: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
    extra: Callable[[int], Sequence[str]] | None = None,
    *,
    metrics_port: int | None = None,
    health_port: int | None = None,
    heartbeat_ttl: float = 10.0,
) -> int:
    """Runs ``processes`` copies of ``child_argv`` until SIGTERM/SIGINT/SIGHUP, then stops them.

    A child that exits is started again after a backoff that doubles up to 30 s (and
    resets once a child has lived 10 s). Returns 0 after a clean stop. Raises
    :class:`WorkersCannotStart` (after stopping every child) once a child's model failed to
    load :data:`MAX_FAILED_STARTS` times in a row. With ``metrics_port``, serves every
    child's metrics, summed, on ``http://0.0.0.0:<metrics_port>/metrics``; with
    ``health_port``, ``/live`` (the supervisor runs) and ``/ready`` (every child is: see
    worker.health), its children's heartbeats ``heartbeat_ttl`` apart at most.
    """
    with tempfile.TemporaryDirectory(prefix="conveyor-supervisor-") as folder:
        run = Path(folder)
        metrics_dir = None
        if metrics_port is not None:
            metrics_dir = run / "metrics"
            metrics_dir.mkdir()
        children = [
            _Child(
                i,
                [*child_argv, *(extra(i) if extra else ())],
                env,
                run / f"child-{i}.json",
                metrics_dir,
            )
            for i in range(processes)
        ]
        ready = children_ready(
            lambda: [(c.health, c.running_pid()) for c in children], heartbeat_ttl
        )
        with (
            _serving_metrics(metrics_port, metrics_dir) as on_exit,
            serving_health(health_port, ready),
        ):
            return _supervise(children, grace_period, on_started, on_exit)


@contextlib.contextmanager
def _serving_metrics(port: int | None, folder: Path | None) -> Iterator[Callable[[int], None]]:
    """Serves the children's metrics files (summed) on ``port``; yields what to call with the
    pid of a child that exited."""
    if port is None or folder is None:
        yield lambda pid: None
        return
    with serving(port, folder=folder) as mark_dead:
        yield mark_dead


def _supervise(
    children: list[_Child],
    grace_period: float,
    on_started: Callable[[], None] | None,
    on_exit: Callable[[int], None],
) -> int:
    stopping = False
    shown: set[str] = set()  # failures printed already (with their traceback)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # SIGHUP too: a closed terminal no longer reaches the children (own sessions), so it
    # must stop them through us.
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        for child in children:
            child.start()
        if on_started is not None:
            on_started()
        while not stopping:
            now = time.monotonic()
            for child in children:
                process = child.process
                if process is not None and process.poll() is not None:
                    on_exit(process.pid)
                    if now - child.started > _STABLE_S:
                        child.backoff = 0.5
                    failure = child.failure()
                    if failure is None:
                        child.failed_starts = 0
                    else:
                        child.failed_starts += 1
                        _show_failure(failure, shown)
                        if child.failed_starts >= MAX_FAILED_STARTS:
                            raise WorkersCannotStart(str(failure.get("error")), child.failed_starts)
                    # a failed load was said above, once: each restart of it says no more
                    logger.log(
                        logging.INFO if failure else logging.WARNING,
                        "supervisor.child_exited child=%d pid=%d code=%s restart_in=%.1fs",
                        child.index,
                        process.pid,
                        process.returncode,
                        child.backoff,
                    )
                    child.process = None
                    child.restart_at = now + child.backoff
                    child.backoff = min(child.backoff * 2, _MAX_BACKOFF_S)
                if child.process is None and now >= child.restart_at:
                    child.start()
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_all(children, grace_period)
    return 0


def _show_failure(failure: dict[str, str], shown: set[str]) -> None:
    """A child's failed load: its error and traceback, the first time it is seen."""
    error = str(failure.get("error"))
    if error in shown:
        return
    shown.add(error)
    logger.error(
        "model.load_failed model=%s version=%s error=%s\n%s",
        failure.get("model"),
        failure.get("version"),
        error,
        str(failure.get("traceback", "")).rstrip("\n"),
    )


def _stop_all(children: list[_Child], grace_period: float) -> None:
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_period + 5
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.warning("supervisor.kill pid=%d: did not stop in time", process.pid)
            process.kill()
            process.wait()


def worker_argv(args: Sequence[str]) -> list[str]:
    """The command line of one child worker process.

    ``-P`` (Python 3.11's safe path): ``-m`` would otherwise put the current directory first
    on ``sys.path``, and run from a checkout of this project, its ``conveyor/`` folder (the
    core alone) would shadow the installed package (``No module named conveyor.cli``).
    """
    return [sys.executable, "-P", "-m", "conveyor.cli", "worker", *args, "--processes", "1"]


# Thread pools of numeric libraries (torch, numpy's BLAS) size themselves to every core: N
# processes on one host then run N x cores threads, which wait for each other at every operator.
# Measured (bench.embeddings, MiniLM on 2 cores): 2 processes with torch's default threads ran
# at 0.25x one call at a time in process; with one thread each, 1.66x. Ray Serve sets
# OMP_NUM_THREADS to a replica's CPUs the same way.
_THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS",)


def worker_env(redis_url: str, processes: int = 1) -> dict[str, str]:
    """The environment of a child worker: the Redis URL goes here, never on a command line
    (which any local user can read with ``ps``, password included). With several processes
    on this host each gets its share of the cores for its numeric thread pools
    (``OMP_NUM_THREADS``), unless the environment sets it already."""
    env = {**os.environ, "CONVEYOR_REDIS_URL": redis_url}
    if processes > 1:
        share = str(max(1, _cpus() // processes))
        for variable in _THREAD_POOL_VARIABLES:
            env.setdefault(variable, share)
    return env


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
