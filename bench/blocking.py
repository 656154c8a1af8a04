"""A blocking model on the fleet: one call at a time per instance, more processes for more.

Run from the repository root::

    python -m bench.blocking [--rounds N] [--seconds S] [--in-flight N] [--cost-ms MS]

The model (``bench/models/bench-blocking``) is a plain ``def predict`` holding the GIL for a
fixed cost per call (a pure-Python loop, calibrated here to ``--cost-ms``, 2 ms), a stand-in for
a model whose tokenization and kernel launches are Python. Single-item calls. Cases, measured in
turns round after round (``--rounds``, ``--seconds`` each) so a machine busier at one moment
weighs on all alike:

- **in process, one at a time**: the model loaded in this process, ``predict`` called
  directly, one call after the other: the most one instance gives;
- **fleet, 1 process** and **fleet, 2 processes**: a private Redis, worker processes serving
  the model as it ships (one call at a time per instance), one client keeping ``--in-flight``
  (16) calls in flight;
- **fleet, 1 process, max_concurrent_calls 16**: what every plain ``def`` model got before
  issue 14 (each of the 16 calls in flight in a thread of its own, in one instance).

Figures: calls/s over all rounds (and the slowest and fastest round), the ratio to the
in-process figure, the share of calls each worker process ran, and the worker processes' CPU
per call (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from redis import Redis as SyncRedis

from bench.harness import MODELS, Process, conveyor_worker, cpu_seconds, machine
from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest, RequestInput

MODEL = "bench-blocking"
CALL_TIMEOUT_S = 60.0


def _request(i: int) -> InferenceRequest:
    return InferenceRequest(
        id=f"r{i}", inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[1.0])]
    )


def calibrate(cost_ms: float) -> int:
    """Loop turns of the model that take about ``cost_ms`` here (best of 20 timings)."""
    loops = 10_000

    def timed() -> float:
        best = float("inf")
        for _ in range(20):
            start = time.perf_counter()
            total = 0
            for i in range(loops):
                total += i * i % 7
            best = min(best, time.perf_counter() - start)
        return best

    return max(1, round(loops * cost_ms / 1e3 / timed()))


@contextmanager
def folder(loops: int, **settings: object) -> Iterator[Path]:
    """A temporary copy of the model folder with ``loops`` and ``settings``."""
    with tempfile.TemporaryDirectory(prefix="conveyor-blocking-") as tmp:
        copy = Path(tmp) / MODEL
        shutil.copytree(MODELS / MODEL, copy, ignore=shutil.ignore_patterns("__pycache__"))
        file = copy / "model-settings.json"
        body = {
            **json.loads(file.read_text()),
            **settings,
            "parameters": {"extra": {"loops": loops}},
        }
        file.write_text(json.dumps(body))
        yield copy


@dataclass
class Tally:
    name: str
    calls: int = 0
    seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)  # calls/s of each round
    by_pid: Counter[int] = field(default_factory=Counter)
    worker_cpu: float = 0.0  # seconds

    def add(self, calls: int, seconds: float) -> None:
        self.calls += calls
        self.seconds += seconds
        self.rounds.append(calls / seconds)

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


@dataclass
class Fleet:
    tally: Tally
    prefix: str
    workers: list[Process]


def load_in_process(copy: Path) -> Any:
    """The model loaded in this process. Its methods are plain ``def`` (MLModel types them
    async): they are called directly, as its author would."""
    settings = load_model_settings(copy)
    model: Any = settings.implementation(settings)
    model.load()
    return model


def in_process_round(model: Any, seconds: float, tally: Tally) -> None:
    calls = 0
    start = time.perf_counter()
    stop_at = start + seconds
    while time.perf_counter() < stop_at:
        model.predict(_request(calls))
        calls += 1
    tally.add(calls, time.perf_counter() - start)


async def fleet_round(url: str, fleet: Fleet, in_flight: int, seconds: float) -> None:
    tally = fleet.tally
    pids = [w.pid for w in fleet.workers]
    calls = 0
    async with Client(url, prefix=fleet.prefix, timeout=CALL_TIMEOUT_S) as client:
        model = client.model(MODEL)
        await model.predict(_request(-1))  # the client's connections, before the clock starts
        cpu = sum(cpu_seconds(p) for p in pids)
        start = time.perf_counter()
        stop_at = start + seconds

        async def caller() -> None:
            nonlocal calls
            while time.perf_counter() < stop_at:
                response = await model.predict(_request(calls))
                calls += 1
                (pid,) = (o for o in response.outputs if o.name == "pid")
                tally.by_pid[int(np.asarray(pid.data.root).ravel()[0])] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(caller)
        tally.add(calls, time.perf_counter() - start)
        tally.worker_cpu += sum(cpu_seconds(p) for p in pids) - cpu


def report(
    tallies: list[Tally], in_flight: int, loops: int, cost_ms: float, info: dict[str, str]
) -> None:
    base = tallies[0].per_second
    print(
        f"\nmodel: {loops} loop turns (~{cost_ms:g} ms of Python holding the GIL) per call; "
        f"fleet: one client, {in_flight} single-item calls in flight\n"
    )
    print(
        "| case | calls/s | rounds (min-max) | x in process | share of calls by process "
        "| worker CPU per call |"
    )
    print("|---|---|---|---|---|---|")
    for tally in tallies:
        spread = f"{min(tally.rounds):.0f}-{max(tally.rounds):.0f}"
        shares = ", ".join(
            f"{n / tally.calls:.0%}" for n in sorted(tally.by_pid.values(), reverse=True)
        )
        cpu = f"{tally.worker_cpu / tally.calls * 1e3:.2f} ms" if tally.by_pid else "-"
        print(
            f"| {tally.name} | {tally.per_second:.0f} | {spread} | {tally.per_second / base:.2f}x "
            f"| {shares or '-'} | {cpu} |"
        )
    print()
    for key, value in info.items():
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per case per round")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--cost-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    loops = calibrate(args.cost_ms)
    in_process = Tally("in process, one at a time")
    with RedisServer() as redis, ExitStack() as stack:
        alone = load_in_process(stack.enter_context(folder(loops)))
        fleets: list[Fleet] = []
        for name, processes, settings in (
            ("fleet, 1 process", 1, {}),
            ("fleet, 2 processes", 2, {}),
            ("fleet, 1 process, max_concurrent_calls 16 (before)", 1, {"max_concurrent_calls": 16}),
        ):
            copy = stack.enter_context(folder(loops, **settings))
            prefix = f"bench-blocking-{len(fleets)}"
            workers = []
            for i in range(processes):
                worker = conveyor_worker(
                    redis.url,
                    prefix,
                    f"{prefix}-{i}",
                    [MODEL],
                    concurrency=64,
                    models_dir=copy.parent,
                )
                stack.callback(worker.stop)
                workers.append(worker)
            for worker in workers:
                worker.wait_for_log("worker.started")
            fleets.append(Fleet(Tally(name), prefix, workers))
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
            in_process_round(alone, args.seconds, in_process)
            for fleet in fleets:
                anyio.run(fleet_round, redis.url, fleet, args.in_flight, args.seconds)
        with SyncRedis.from_url(redis.url) as probe:
            info = machine(str(probe.info("server")["redis_version"]))
    info["note"] = (
        "2 CPUs shared with other engineers' builds and tests" if os.cpu_count() == 2 else ""
    )
    report([in_process, *(f.tally for f in fleets)], args.in_flight, loops, args.cost_ms, info)


if __name__ == "__main__":
    main()
