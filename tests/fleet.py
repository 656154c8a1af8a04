"""Workers as real subprocesses, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

MODELS = Path(__file__).parent / "models"
EXAMPLES = Path(__file__).parent.parent / "examples" / "models"


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
