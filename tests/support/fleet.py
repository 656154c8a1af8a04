"""Workers as real subprocesses, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from tests.support.probe import Probe, pending_count
from tests.support.process import Watcher, lines_of
from tests.support.waiting import wait_until

MODELS = Path(__file__).parents[1] / "models" / "common"
EXAMPLES = Path(__file__).parents[2] / "examples" / "models"


class WorkerProcess:
    """One ``conveyor worker`` subprocess whose log lines (stderr) are watched for events."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
        )
        assert self.process.stderr is not None
        self.output = Watcher(lines_of(self.process.stderr), describe=self.log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def lines(self) -> list[str]:
        """The log lines so far (a copy)."""
        return self.output.snapshot()

    def wait_for_log(self, text: str, timeout: float = 30.0, start: int = 0) -> str:
        """Waits until a log line (from line ``start`` on) containing ``text`` appears; returns
        it. ``"<eof>"`` waits for the end of the log: the worker exited."""
        if text == "<eof>":
            self.output.wait_ended(timeout)
            return text
        return self.output.wait(
            lambda lines: next((line for line in lines[start:] if text in line), None),
            f"log line {text!r}",
            timeout,
        )

    def metrics_port(self, timeout: float = 30.0) -> int:
        """The port its ``--metrics-port 0`` bound, read off its ``metrics.serving`` line."""
        return self._port("metrics.serving", timeout)

    def health_port(self, timeout: float = 30.0) -> int:
        """The port its ``--health-port 0`` bound, read off its ``health.serving`` line."""
        return self._port("health.serving", timeout)

    def _port(self, event: str, timeout: float) -> int:
        # port 0, then the port logged: a port picked before the start could be taken by
        # another process in between (the test would talk to it, or the start would fail)
        line = self.wait_for_log(event, timeout)
        found = re.search(r"(?:port=|address=\S*:)(\d+)", line)
        assert found, line
        return int(found[1])

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def count(self, text: str) -> int:
        """How many log lines so far contain ``text``."""
        return sum(text in line for line in self.lines)

    def problems(self, allowed: Sequence[str] = ()) -> list[str]:
        """The log lines at WARNING or above (or tracebacks) that contain none of ``allowed``."""
        bad = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
        return [
            line
            for line in self.lines
            if any(word in line for word in bad) and not any(ok in line for ok in allowed)
        ]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    async def wait_for_log_async(self, text: str, timeout: float = 15.0, start: int = 0) -> str:
        """:meth:`wait_for_log` from async code (on a worker thread)."""
        return await anyio.to_thread.run_sync(lambda: self.wait_for_log(text, timeout, start))

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        self.signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(self.wait)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


class GatewayProcess(WorkerProcess):
    """One ``conveyor gateway`` subprocess; its ports are read off its ``gateway.started``
    log line (it binds port 0: free ports, picked by the kernel)."""

    http_port = 0
    grpc_port: int | None = None

    def wait_started(self, timeout: float = 30.0) -> None:
        line = self.wait_for_log("gateway.started", timeout)
        found = re.search(r"http=\S+:(\d+) grpc=(\d+|None)", line)
        assert found, line
        self.http_port = int(found[1])
        self.grpc_port = None if found[2] == "None" else int(found[2])

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


class Fleet:
    """Starts workers (and gateways) for one test (one key prefix) and stops them all
    afterwards."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.workers: list[WorkerProcess] = []

    def argv(self, *model_dirs: Path | str, extra: Sequence[str] = ()) -> list[str]:
        return [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            *map(str, model_dirs),
            "--redis",
            self.redis_url,
            "--prefix",
            self.prefix,
            "--heartbeat-ttl",
            "3",
            *extra,
        ]

    def start(
        self, *model_dirs: Path | str, extra: Sequence[str] = (), wait: bool = True
    ) -> WorkerProcess:
        env = dict(os.environ)
        env.pop("CONVEYOR_REDIS_URL", None)
        worker = WorkerProcess(self.argv(*model_dirs, extra=extra), env)
        self.workers.append(worker)
        if wait:
            try:
                worker.wait_for_log("worker.started")
            except BaseException:
                worker.stop()
                raise
        return worker

    async def start_many(
        self, count: int, *model_dirs: Path | str, extra: Sequence[str] = ()
    ) -> list[WorkerProcess]:
        """Starts ``count`` workers at once (they load in parallel), then waits until all run."""
        workers = [self.start(*model_dirs, extra=extra, wait=False) for _ in range(count)]
        for worker in workers:
            await worker.wait_for_log_async("worker.started", 30)
        return workers

    def start_gateway(self, extra: Sequence[str] = ()) -> GatewayProcess:
        """A ``conveyor gateway`` for this fleet on free ports, started (stopped with it)."""
        env = dict(os.environ)
        env.pop("CONVEYOR_REDIS_URL", None)
        argv = [sys.executable, "-m", "conveyor.cli", "gateway", "--redis", self.redis_url]
        argv += ["--prefix", self.prefix, "--http-port", "0", "--grpc-port", "0", *extra]
        gateway = GatewayProcess(argv, env)
        self.workers.append(gateway)
        gateway.wait_started()
        return gateway

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_acked(probe: Probe, *streams: str, timeout: float = 10.0) -> None:
    """Waits until every job of ``streams`` is acked and deleted (XLEN and pending 0).

    A worker acks a job only once its answer is stored, one round trip after the answer: a
    caller can hold its answer a moment before the entry leaves its stream. Polled under a
    deadline (Redis has no event for it). From async code:
    ``await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))``.
    """

    def settled(stream: str) -> bool:
        return not probe.xlen(stream) and pending_count(probe, stream) == 0

    wait_until(lambda: all(map(settled, streams)), f"jobs of {streams} acked", timeout)
