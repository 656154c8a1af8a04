"""What every driver shares: worker processes, the drain loop, the request/reply loops, output.

Standard library only: drivers import this inside each peer's own virtual environment (and
Conveyor's driver inside the project's), run as ``python -m bench.peers.<peer> MODE ...`` from
the repository root. A driver prints one JSON object, its figures, as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

ROOT = Path(__file__).resolve().parent.parent.parent
_POLL_S = 0.005  # how often the drain loop reads the backlog


@dataclass(frozen=True)
class Options:
    url: str
    count: int  # jobs of the drain case
    concurrency: int  # jobs a worker process runs at once
    in_flight: int  # callers of the request/reply case
    seconds: float  # length of the request/reply measurement
    warmup: float  # seconds of load before it
    sequential: int  # at most this many sequential calls...
    sequential_seconds: float  # ... within about this long (at least 5 calls)


def parse(argv: Sequence[str] | None = None) -> tuple[str, Options]:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("drain", "rpc"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--sequential-seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    return args.mode, Options(
        args.url,
        args.count,
        args.concurrency,
        args.in_flight,
        args.seconds,
        args.warmup,
        args.sequential,
        args.sequential_seconds,
    )


class WorkerProcess:
    """A worker started by a driver: own session, stderr to a file, SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        full_env = dict(os.environ)
        full_env.pop("CONVEYOR_REDIS_URL", None)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its children (a process pool) go with it
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 3.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        # anything of its session still running (a pool process) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Peer(Protocol):
    """One queue library (or Conveyor) as its driver uses it. Open with ``async with``."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> Any: ...

    def worker_argv(self) -> list[str]:
        """The command that starts one worker process of ``concurrency`` jobs at once."""
        ...

    def worker_env(self) -> dict[str, str]: ...

    async def enqueue(self, count: int) -> None:
        """Enqueues ``count`` no-op jobs, not waiting for them."""
        ...

    async def backlog(self) -> int:
        """Jobs enqueued and not finished yet (queued or running)."""
        ...

    async def call(self) -> None:
        """Enqueues one no-op job and waits for its result."""
        ...


# -- the drain case ------------------------------------------------------------------------------


async def drain(peer: Peer, opts: Options) -> dict[str, Any]:
    """``count`` jobs enqueued before a worker exists, then one worker process drains them.

    The clock starts when the backlog is first seen below ``count`` (the worker took and
    finished its first jobs: its start-up is not counted) and stops when the backlog is 0;
    jobs/s = the jobs finished in between / that time.
    """
    begin = time.perf_counter()
    await peer.enqueue(opts.count)
    enqueue_s = time.perf_counter() - begin
    before = await peer.backlog()
    if before != opts.count:
        raise RuntimeError(f"backlog is {before} after enqueuing {opts.count} jobs")
    limit = 60 + opts.count / 50  # 50 jobs/s: no peer is that slow
    with WorkerProcess(peer.worker_argv(), peer.worker_env()) as worker:
        spawned = time.perf_counter()
        start: float | None = None
        at_start = opts.count
        left = opts.count
        while left > 0:
            await asyncio.sleep(_POLL_S)
            left = await peer.backlog()
            now = time.perf_counter()
            if start is None and left < opts.count:
                start, at_start = now, left
            if now - spawned > limit or not worker.alive():
                why = "exited" if not worker.alive() else f"not done after {limit:.0f} s"
                raise RuntimeError(f"worker {why}, backlog {left}:\n{worker.tail()}")
        end = time.perf_counter()
    assert start is not None
    seconds = end - start
    return {
        "drain_jobs_per_s": at_start / seconds if seconds > 0 else None,
        "drain_jobs": at_start,
        "drain_seconds": seconds,
        "first_job_after_s": start - spawned,
        "enqueue_jobs_per_s": opts.count / enqueue_s,
    }


# -- the request/reply case ----------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]


async def wait_ready(call: Call, worker: WorkerProcess, limit: float = 60.0) -> float:
    """Calls until one call answers (each bounded): the worker is up. Returns the seconds."""
    begin = time.perf_counter()
    while True:
        try:
            await asyncio.wait_for(call(), timeout=5)
            return time.perf_counter() - begin
        except (TimeoutError, ConnectionError, OSError):
            if not worker.alive() or time.perf_counter() - begin > limit:
                raise RuntimeError(f"no answer from the worker:\n{worker.tail()}") from None


async def sequential(call: Call, count: int, seconds: float) -> dict[str, Any]:
    """Up to ``count`` calls one after the other, stopping after ``seconds`` (>= 5 calls)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    while len(latencies) < count and (len(latencies) < 5 or time.perf_counter() < stop_at):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    return {
        "seq_p50_ms": statistics.median(latencies) * 1e3,
        "seq_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "seq_calls": len(latencies),
    }


async def load(call: Call, in_flight: int, seconds: float) -> dict[str, Any]:
    """``in_flight`` callers, each calling again as soon as its call returns, for ``seconds``.

    Calls started before the end are waited for; results/s = calls done / time to the last.
    """
    done = 0
    begin = time.perf_counter()
    stop_at = begin + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    elapsed = time.perf_counter() - begin
    return {"results_per_s": done / elapsed, "load_calls": done, "load_seconds": elapsed}


async def rpc(peer: Peer, opts: Options) -> dict[str, Any]:
    """One worker process; sequential latency, then ``in_flight`` callers awaiting results."""
    with WorkerProcess(peer.worker_argv(), peer.worker_env()) as worker:
        ready_s = await wait_ready(peer.call, worker)
        for _ in range(5):
            await peer.call()
        limit = opts.sequential_seconds + opts.warmup + opts.seconds + 60
        figures = await asyncio.wait_for(_rpc_figures(peer, opts), timeout=limit)
        figures["ready_s"] = ready_s
        return figures


async def _rpc_figures(peer: Peer, opts: Options) -> dict[str, Any]:
    figures = await sequential(peer.call, opts.sequential, opts.sequential_seconds)
    await load(peer.call, opts.in_flight, opts.warmup)
    figures.update(await load(peer.call, opts.in_flight, opts.seconds))
    figures["in_flight"] = opts.in_flight
    return figures


# -- main ----------------------------------------------------------------------------------------


def versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that ``with WorkerProcess(...)`` stops the worker: the
    runner sends SIGTERM to a driver that overran its time (a worker has its own session and
    would outlive a driver killed outright)."""

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_)


def main(make_peer: Callable[[Options], Peer], packages: Sequence[str]) -> None:
    """Runs ``drain`` or ``rpc`` (from argv) and prints the figures as one JSON line."""
    stop_on_sigterm()
    mode, opts = parse()

    async def run() -> dict[str, Any]:
        async with make_peer(opts) as peer:
            if mode == "drain":
                return await drain(peer, opts)
            return await rpc(peer, opts)

    try:
        figures = asyncio.run(run())
    except Exception as error:
        traceback.print_exc()
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        figures = {"error": reason}
    figures["versions"] = versions(*packages)
    figures["python"] = sys.version.split()[0]
    print(json.dumps(figures), flush=True)
