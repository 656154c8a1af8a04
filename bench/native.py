"""Where a compiled worker's CPU goes, by compiled function: ``python -m bench.native``.

py-spy reads Python frames, and a module compiled by mypyc (``CONVEYOR_COMPILE=1``, setup.py)
has none: its time shows as the interpreted frame that called into it (the event loop's
``Handle._run``). Linux ``perf`` with DWARF call graphs sees the compiled functions by their C
names (``CPyDef_<module>___<function>``), so this runs a ``conveyor worker`` serving
``bench-echo`` under ``perf record`` and sums the samples of its main thread:

- by where the CPU was (the leaf's library: compiled Conveyor, the interpreter running
  interpreted code and its runtime, the kernel, hiredis, msgpack, ...);
- by compiled function, inclusive (a sample counts once for each compiled function on its
  stack), with the worker's CPU a job that share stands for.

Two loads: ``--jobs N`` echo jobs queued first and drained (every read takes 64: the cost of
a job), or ``--sequential N`` calls one at a time from this process (the cost of a read, an
answer and their round trips, a job each). Needs ``perf`` on PATH and the compiled build where
this process imports conveyor from (the worker inherits ``PYTHONPATH``), e.g.::

    CONVEYOR_COMPILE=1 pip install --no-deps --target /tmp/cc-site .
    PYTHONPATH=/tmp/cc-site:. python -m bench.native --jobs 30000
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
from redis import Redis

from bench import harness
from bench.drain import _cpu, _load_conveyor
from bench.run import _small_request
from conveyor.client import Client
from conveyor.compiled import compiled_modules, describe_build
from conveyor.embedded import RedisServer

_GENERATOR = "_gen_____mypyc_generator_helper__"
# a leaf's library (the shared object's file name, first match) -> what the table calls it
_PLACES = (
    ("conveyor__mypyc", "compiled Conveyor"),
    # interpreted code, and the objects, dicts and calls of the C API compiled code calls too
    ("libpython", "libpython (CPython: interpreted code, objects, dicts, calls)"),
    ("kernel", "the kernel (sockets, wake-ups)"),
    ("hiredis", "hiredis"),
    ("_cmsgpack", "msgpack"),
    ("_pydantic_core", "pydantic-core"),
    ("_multiarray", "numpy"),
    ("_asyncio", "asyncio (C)"),
    ("libc", "libc (malloc, memcpy)"),
)


_FRAME = re.compile(r"^(?P<symbol>.*) \((?P<library>[^()]*)\)$")


# One sample's stack, innermost frame first: (library, symbol) a frame; an inlined frame's
# library is "" (its caller's).
Stack = list[tuple[str, str]]


def readable(symbol: str) -> str | None:
    """``CPyDef_runner____run_job_JobRunner_gen_____mypyc_generator_helper__`` ->
    ``runner._run_job_JobRunner (async)``; None for a symbol not of compiled Conveyor."""
    for prefix in ("CPyDef_", "CPyPy_"):
        if symbol.startswith(prefix):
            name = symbol[len(prefix) :]
            break
    else:
        return None
    suffix = ""
    if name.endswith(_GENERATOR):
        name, suffix = name[: -len(_GENERATOR)], " (async)"
    return ".".join(name.split("___")) + suffix


def record(pid: int, out: Path, frequency: int) -> subprocess.Popen[bytes]:
    argv = ["perf", "record", "-F", str(frequency), "--call-graph", "dwarf,16384"]
    argv += ["-o", str(out), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(perf: subprocess.Popen[bytes]) -> None:
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=120)


def read_samples(data: Path, pid: int) -> list[Stack]:
    """The stacks of thread ``pid`` (the main thread: the event loop) in ``data``."""
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stacks: list[Stack] = []
    current: Stack | None = None
    for line in script.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):  # a sample's head: its thread id
            current = [] if line.strip() == str(pid) else None
            if current is not None:
                stacks.append(current)
            continue
        if current is None:
            continue
        frame = line.strip().split(" ", 1)[-1]  # less the address
        if frame.endswith(" (inlined)"):  # its library is the next frame's
            current.append(("", frame.removesuffix(" (inlined)")))
        elif found := _FRAME.match(frame):
            current.append((Path(found["library"]).name, found["symbol"]))
        else:
            current.append(("?", frame))
    return stacks


def place(library: str) -> str:
    return next((name for key, name in _PLACES if key in library), f"other ({library})")


def report(stacks: list[Stack], us_per_job: float, top: int) -> list[str]:
    total = len(stacks)
    if not total:
        sys.exit(
            "bench.native: perf recorded no sample of the worker's main thread "
            "(perf_event_paranoid may forbid it: sysctl kernel.perf_event_paranoid)"
        )
    places: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack in stacks:
        library = next((library for library, _ in stack if library), "?")
        places[place(library)] += 1
        inclusive.update({name for _, symbol in stack if (name := readable(symbol))})
    lines = [
        f"{total:,} samples of the worker's main thread; its CPU: {us_per_job:.1f} us a job",
        "",
        "| where the CPU was (the sample's innermost frame) | share | us a job |",
        "|---|---:|---:|",
    ]
    for name, count in places.most_common():
        lines.append(f"| {name} | {count / total:.1%} | {us_per_job * count / total:.1f} |")
    lines += [
        "",
        "| compiled function (inclusive: it and what it called) | share | us a job |",
        "|---|---:|---:|",
    ]
    for name, count in inclusive.most_common(top):
        lines.append(f"| `{name}` | {count / total:.1%} | {us_per_job * count / total:.1f} |")
    return lines


def drain(url: str, jobs: int, data: Path, frequency: int) -> tuple[int, float]:
    """(the worker's pid, its CPU us a job) draining ``jobs`` queued echo jobs under perf."""
    with Redis.from_url(url) as redis:
        stream = _load_conveyor(redis, jobs)
        worker = harness.conveyor_worker(url, "bench1", "native-w1", ("bench-echo",))
        try:
            worker.wait_for_log("worker.started")
            perf = record(worker.pid, data, frequency)
            cpu = _cpu(worker.pid)
            while redis.xlen(stream) > 0:
                time.sleep(0.02)
            used = _cpu(worker.pid) - cpu
            stop(perf)
        finally:
            worker.stop()
    return worker.pid, used / jobs * 1e6


def sequential(url: str, calls: int, data: Path, frequency: int) -> tuple[int, float]:
    """(the worker's pid, its CPU us a call) for ``calls`` calls one at a time under perf."""
    worker = harness.conveyor_worker(url, "bench1", "native-w1", ("bench-echo",))

    async def run() -> float:
        request = _small_request()
        async with Client(url, prefix="bench1") as client:
            model = client.model("bench-echo")
            for _ in range(200):  # warm: connections, the read's layout
                await model.predict(request)
            perf = record(worker.pid, data, frequency)
            await anyio.sleep(0.5)  # perf attached
            cpu = _cpu(worker.pid)
            for _ in range(calls):
                await model.predict(request)
            used = _cpu(worker.pid) - cpu
            stop(perf)
        return used / calls * 1e6

    try:
        worker.wait_for_log("worker.started")
        return worker.pid, anyio.run(run)
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.native", description=__doc__.split("\n\n")[0]
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--jobs", type=int, default=30_000, help="jobs to drain (30,000)")
    load.add_argument("--sequential", type=int, help="calls one at a time, instead of a drain")
    parser.add_argument("--frequency", type=int, default=500, help="perf samples a second")
    parser.add_argument("--top", type=int, default=40, help="compiled functions listed")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        sys.exit("bench.native: needs Linux perf on PATH (Debian: apt-get install linux-perf)")
    if not compiled_modules():
        sys.exit(
            "bench.native: conveyor is not compiled here (conveyor --version says "
            f"'{describe_build()}'): build it with CONVEYOR_COMPILE=1 and put it first on "
            "PYTHONPATH (see this module's help)"
        )
    with tempfile.TemporaryDirectory(prefix="conveyor-native-") as tmp, RedisServer() as server:
        data = Path(tmp) / "perf.data"
        if args.sequential:
            pid, us = sequential(server.url, args.sequential, data, args.frequency)
            what = f"{args.sequential:,} calls one at a time"
        else:
            pid, us = drain(server.url, args.jobs, data, args.frequency)
            what = f"a drain of {args.jobs:,} jobs"
        with Redis.from_url(server.url) as probe:
            info = harness.machine(str(probe.info("server")["redis_version"]))
        lines = report(read_samples(data, pid), us, args.top)
    print(f"`conveyor worker` ({describe_build()}) serving bench-echo, {what}\n")
    print("\n".join(lines))
    print()
    print("\n".join(f"- {key}: {value}" for key, value in info.items()))


if __name__ == "__main__":
    main()
