"""What every case of the suite shares: processes, timing loops, CPU accounting, machine info."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
from redis import Redis as SyncRedis

from conveyor.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "models"
_TICK = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------------------


class Process:
    """A child process whose stderr lines are kept (and drained, so it never blocks on a pipe)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        metrics_port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.metrics_port = metrics_port  # a Conveyor worker's Prometheus port, if it has one
        env = dict(os.environ if env is None else env)  # this process's, by default
        env.pop("CONVEYOR_REDIS_URL", None)
        self.popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for_log(self, text: str, timeout: float = 60.0) -> int:
        """Blocks until a stderr line contains ``text``; returns how many lines came before."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(text in line or line == "<eof>" for line in self.lines), timeout
            )
            found = [i for i, line in enumerate(self.lines) if text in line or line == "<eof>"]
            if not ok or self.lines[found[0]] == "<eof>":
                tail = "\n".join(self.lines[-30:])
                raise RuntimeError(f"{self.name} never logged {text!r}:\n{tail}")
            return found[0]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)


def conveyor_worker(
    url: str,
    prefix: str,
    name: str,
    models: Sequence[str],
    *,
    concurrency: int = 64,
    models_dir: Path = MODELS,
    metrics: bool = False,
) -> Process:
    """One ``conveyor worker`` process serving the given folders of ``models_dir``
    (bench/models), with ``--metrics-port`` on a free port when ``metrics``.

    Logs at info so that ``worker.started`` (an info line) says when it consumes; a job that
    succeeds logs nothing at info, so the log costs nothing while measuring (checked: see
    :func:`log_lines_after_start`).
    """
    folders = [str(models_dir / model) for model in models] or [str(models_dir)]
    argv = [sys.executable, "-m", "conveyor.cli", "worker", *folders, "--redis", url]
    argv += ["--prefix", prefix, "--concurrency", str(concurrency), "--name", name]
    argv += ["--log-level", "info"]
    port = free_port() if metrics else None
    if port is not None:
        argv += ["--metrics-port", str(port)]
    return Process(name, argv, metrics_port=port)


def model_copy(into: Path, model: str, **settings: Any) -> None:
    """A copy of the folder ``bench/models/<model>`` in ``into``, with ``settings`` (e.g.
    ``max_batch_size=1``) written over its ``model-settings.json``."""
    folder = into / model
    shutil.copytree(MODELS / model, folder, ignore=shutil.ignore_patterns("__pycache__"))
    file = folder / "model-settings.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **settings}, indent=2))


def batch_sizes(workers: Sequence[Process]) -> tuple[float, float]:
    """(requests, model calls) the workers' batchers ran so far, from their Prometheus
    metrics (the ``conveyor_worker_batch_size`` histogram's sum and count)."""
    found = {"sum": 0.0, "count": 0.0}
    for worker in workers:
        if worker.metrics_port is None:
            continue
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"conveyor_worker_batch_size_{key}{{"):
                    found[key] += float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


def floor_worker(url: str) -> Process:
    return Process("floor-worker", [sys.executable, "-m", "bench.floor", url])


def log_lines_after_start(process: Process) -> list[str]:
    start = process.wait_for_log("worker.started", timeout=0)
    return [line for line in process.lines[start + 1 :] if line != "<eof>"]


# -- CPU and Redis accounting --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


# Commands the meter itself sends (INFO) or the 1,000-call case's observer (CLIENT LIST).
_OWN_COMMANDS = frozenset({"info", "client|list", "client"})


class Meter:
    """Between ``start()`` and ``stop()``: CPU seconds used by named processes (from /proc),
    and commands Redis ran (``INFO commandstats``), by command."""

    def __init__(self, pids: Mapping[str, Sequence[int]], redis: SyncRedis | None = None) -> None:
        self._pids = {role: list(p) for role, p in pids.items()}
        self._redis = redis
        self._start: dict[str, float] = {}
        self._commands: Counter[str] = Counter()
        self.used: dict[str, float] = {}
        self.commands: Counter[str] = Counter()

    def _cpu(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self._pids.items()}

    def _command_counts(self) -> Counter[str]:
        if self._redis is None:
            return Counter()
        stats = self._redis.info("commandstats")
        counts: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in _OWN_COMMANDS:
                counts[name] = int(value["calls"])
        return counts

    def start(self) -> None:
        self._commands = self._command_counts()
        self._start = self._cpu()

    def stop(self) -> None:
        now = self._cpu()
        self.used = {role: now[role] - self._start[role] for role in now}
        self.commands = self._command_counts() - self._commands


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Result:
    """One measurement of one case in one round."""

    case: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls_per_s: float | None = None
    unit: str = "calls/s"
    bytes_per_s: float | None = None
    calls: int = 0
    seconds: float = 0.0
    cpu_us_per_call: dict[str, float] = field(default_factory=dict)
    commands_per_call: dict[str, float] = field(default_factory=dict)  # Redis, by command
    extra: dict[str, float] = field(default_factory=dict)


Call = Callable[[], Awaitable[object]]


async def sequential(case: str, call: Call, count: int, meter: Meter) -> Result:
    """``count`` calls one after the other: latency percentiles."""
    latencies: list[float] = []
    meter.start()
    begin = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - begin
    meter.stop()
    latencies.sort()
    return Result(
        case,
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        calls_per_s=count / elapsed,
        calls=count,
        seconds=elapsed,
        cpu_us_per_call=_per_call(meter, count),
        commands_per_call=_commands(meter, count),
    )


async def load(case: str, call: Call, in_flight: int, seconds: float, meter: Meter) -> Result:
    """``in_flight`` callers, each calling again as soon as its call returns, for ``seconds``.

    Every caller starts at once; calls/s counts the calls that ended, over the time until the
    last one ended (calls started before the end are waited for, not dropped).
    """
    done = 0
    meter.start()
    begin = time.perf_counter()
    stop_at = begin + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(caller)
    elapsed = time.perf_counter() - begin
    meter.stop()
    return Result(
        case,
        calls_per_s=done / elapsed,
        calls=done,
        seconds=elapsed,
        cpu_us_per_call=_per_call(meter, done),
        commands_per_call=_commands(meter, done),
    )


def _per_call(meter: Meter, calls: int) -> dict[str, float]:
    return {role: used / max(calls, 1) * 1e6 for role, used in meter.used.items()}


def _commands(meter: Meter, calls: int) -> dict[str, float]:
    per_call = {name: n / max(calls, 1) for name, n in meter.commands.most_common()}
    return {"all": sum(per_call.values()), **per_call}


# -- machine ---------------------------------------------------------------------------------


_PACKAGES = (
    "conveyor",
    "redis",
    "hiredis",
    "msgpack",
    "pydantic",
    "pydantic-core",
    "numpy",
    "anyio",
    "trio",
    "py-spy",
)


def _commit() -> str:
    """The tree measured: HEAD, and whether tracked files differ from it (others' work)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        if not head:
            return "unknown (not a git checkout)"
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    files = [line[3:] for line in changed if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(files)}" if files else "")


def machine(redis_version: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    packages = []
    for name in _PACKAGES:
        try:
            packages.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            packages.append(f"{name} (absent)")
    return {
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "commit": _commit(),
        "cpus": f"nproc {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})",
        "cpu model": cpu,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "redis-server": redis_version,
        "packages": ", ".join(packages),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
