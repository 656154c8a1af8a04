"""Workers as real subprocesses, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODELS = Path(__file__).parents[1] / "models" / "common"
EXAMPLES = Path(__file__).parents[2] / "examples" / "models"


class WorkerProcess:
    """One ``conveyor worker`` subprocess whose log lines are watched for events."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_log(self, text: str, timeout: float = 30.0, start: int = 0) -> str:
        """Waits until a log line containing ``text`` appears; returns it."""
        with self._cond:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in self.lines[start:] if text in line or line == "<eof>"]
                return bool(found)

            if not self._cond.wait_for(seen, timeout=timeout):
                raise TimeoutError(f"no log line {text!r} in {timeout}s:\n" + self.log())
            if found[0] == "<eof>" and text != "<eof>":
                raise RuntimeError(f"worker exited before logging {text!r}:\n" + self.log())
            return found[0]

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-40:])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


class Fleet:
    """Starts workers for one test (one key prefix) and stops them all afterwards."""

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

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def wait_acked(probe: Any, *streams: str, timeout: float = 10.0) -> None:
    """Waits until every job of ``streams`` is acked and deleted (XLEN and pending 0).

    A worker acks a job only once its answer is stored, one round trip after the answer: a
    caller can hold its answer a moment before the entry leaves its stream. Polled under a
    deadline (Redis has no event for it); ``probe`` is a sync ``redis.Redis``. From async
    code: ``await anyio.to_thread.run_sync(lambda: wait_acked(probe, stream))``.
    """
    deadline = time.monotonic() + timeout

    def settled(stream: str) -> bool:
        if probe.xlen(stream):
            return False
        try:
            return int(probe.xpending(stream, "workers")["pending"]) == 0
        except Exception:  # no group: nothing was ever delivered
            return True

    while not all(settled(stream) for stream in streams):
        if time.monotonic() > deadline:
            left = {s: (probe.xlen(s), settled(s)) for s in streams}
            raise TimeoutError(f"jobs not acked after {timeout:.0f}s: {left}")
        time.sleep(0.01)
