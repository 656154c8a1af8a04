"""The benchmark suite: Conveyor against the floor (a hand-written Streams RPC), side by side.

Run from the repository root::

    python -m bench [--quick] [--only NAME ...] [--rounds N] [--json FILE] [--markdown]

It starts a private Redis (``RedisServer``), the floor's worker (``bench/floor.py``) and
Conveyor workers (``conveyor worker bench/models/...``, see ``FLEETS``), then runs every case
once per round, floor and Conveyor interleaved, every other round backwards, so each ratio
compares figures taken seconds apart. It prints the median of the rounds; the ratios with the
issue's goals (each the median of the per-round ratios, and the same from CPU per call, which
moves less with other jobs' load); the CPU each process spent and the Redis commands run per
call; and py-spy profiles of Conveyor's client and worker at 64 and 1 in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from redis import Redis as SyncRedis
from rich.console import Console
from rich.table import Table

from bench import harness
from bench import profile as profiling
from bench.floor import FloorClient
from bench.harness import Meter, Process, Result, load, sequential
from conveyor.client import Client
from conveyor.codecs import NumpyCodec
from conveyor.embedded import RedisServer
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest, RequestInput
from conveyor.worker.call_limit import CallLimit

SMALL_BYTES = 100
MIB = 1 << 20
# Worker fleets: name -> (key prefix, processes, model folders of bench/models each serves).
# Each echo fleet serves one model, as the floor's worker reads one stream.
FLEETS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "echo1": ("bench1", 1, ("bench-echo",)),
    "echo2": ("bench2", 2, ("bench-echo",)),
    "chunks": ("bench1", 1, ("bench-chunks",)),
    "both": ("bench3", 1, ("bench-echo", "bench-chunks")),
    "batch1": ("bench-b1", 1, ("bench-batch",)),
    "batch32": ("bench-b32", 1, ("bench-batch",)),
    # bench-cpu: ~2 ms of Python per call, so a worker process is busy with its model, not
    # with Conveyor: what a second worker process buys when the model is the cost
    "cpu1": ("bench-c1", 1, ("bench-cpu",)),
    "cpu2": ("bench-c2", 2, ("bench-cpu",)),
}
# The batching fleets: bench-batch (a model whose cost is per call: 5 ms, one call at a time)
# with max_batch_size 1 (a copy of the folder, no batching) and 32 (its own settings). The
# batched worker may hold what its batches need (every running batch and one forming behind
# them: the worker's own hold, worker.call_limit); both expose their metrics, for the mean batch.
BATCH = 32
BATCH_MODEL = "bench-batch"
FLEET_SETTINGS: dict[str, dict[str, Any]] = {"batch1": {"max_batch_size": 1, "max_batch_time": 0}}
FLEET_CONCURRENCY: dict[str, int] = {"batch32": CallLimit(None, BATCH).jobs_to_hold(0)}

# name -> what it measures, in the order of a round (each Conveyor case after its floor case)
CASES: dict[str, str] = {
    "floor.seq": "floor, 100 B, 1 in flight",
    "conveyor.seq": "Conveyor predict, 100 B, 1 in flight",
    "conveyor.2models.seq": "Conveyor, 1 worker process serving 2 models (1 idle), 1 in flight",
    "floor.64": "floor, 100 B, 64 in flight",
    "conveyor.64": "Conveyor, 1 worker process, 64 in flight",
    "conveyor.trio.64": "Conveyor on trio, 1 worker process, 64 in flight",
    "conveyor.2p.64": "Conveyor, 2 worker processes, 64 in flight",
    "conveyor.2models.64": "Conveyor, 1 worker process serving 2 models (1 idle), 64 in flight",
    "floor.256": "floor, 100 B, 256 in flight",
    "conveyor.256": "Conveyor, 1 worker process, 256 in flight",
    "conveyor.2p.256": "Conveyor, 2 worker processes, 256 in flight",
    "floor.1mib.seq": "floor, 1 MiB float32 echoed, 1 in flight",
    "conveyor.1mib.seq": "Conveyor, 1 MiB float32 echoed, 1 in flight",
    "floor.1mib.64": "floor, 1 MiB float32 echoed, 64 in flight",
    "conveyor.1mib.64": "Conveyor, 1 MiB float32 echoed, 64 in flight",
    "conveyor.cpu.64": "Conveyor, a 2 ms-of-Python model, 1 worker process, 64 in flight",
    "conveyor.cpu.2p.64": "Conveyor, a 2 ms-of-Python model, 2 worker processes, 64 in flight",
    "conveyor.stream.1": "Conveyor predict_stream, 1 stream at a time",
    "conveyor.stream.16": "Conveyor predict_stream, 16 streams at a time",
    "conveyor.1000": "Conveyor, 1,000 in flight: connections per client",
    "conveyor.batch.1": "Conveyor, a 5 ms-per-call model, max_batch_size 1, 256 in flight",
    "conveyor.batch.32": "Conveyor, a 5 ms-per-call model, max_batch_size 32, 256 in flight",
    "conveyor.batch.burst": "Conveyor, bursts of 32 calls at once at max_batch_size 32",
    "profile": "py-spy of Conveyor at 64 in flight: client and worker",
    "profile.seq": "py-spy of Conveyor at 1 in flight (sequential): client and worker",
}

# case -> (reference case, figure compared): the "x reference" column of the figures table
REFERENCES: dict[str, tuple[str, str]] = {
    "conveyor.seq": ("floor.seq", "p50_ms"),
    "conveyor.2models.seq": ("conveyor.seq", "p50_ms"),
    "conveyor.64": ("floor.64", "calls_per_s"),
    "conveyor.trio.64": ("conveyor.64", "calls_per_s"),
    "conveyor.2p.64": ("conveyor.64", "calls_per_s"),
    "conveyor.2models.64": ("conveyor.64", "calls_per_s"),
    "conveyor.256": ("floor.256", "calls_per_s"),
    "conveyor.2p.256": ("conveyor.256", "calls_per_s"),
    "conveyor.1mib.seq": ("floor.1mib.seq", "p50_ms"),
    "conveyor.1mib.64": ("floor.1mib.64", "bytes_per_s"),
    "conveyor.batch.32": ("conveyor.batch.1", "calls_per_s"),
    "conveyor.cpu.2p.64": ("conveyor.cpu.64", "calls_per_s"),
}


@dataclass(frozen=True)
class Goal:
    text: str
    case: str
    reference: str
    figure: str
    target: float
    at_most: bool = False  # the ratio must stay at or below the target (a latency)
    cpu: bool = True  # also report the ratio from CPU per call (for CPU-bound cases)


GOALS = (
    Goal("sequential p50 <= 1.3x the floor", "conveyor.seq", "floor.seq", "p50_ms", 1.3, True),
    Goal(
        "1 process >= 0.8x the floor, 64 in flight", "conveyor.64", "floor.64", "calls_per_s", 0.8
    ),
    Goal(
        "worker CPU per call <= 1.5x the floor's worker, 64 in flight",
        "conveyor.64",
        "floor.64",
        "cpu:worker",  # the worker processes' CPU per call (Meter), not a Result field
        1.5,
        True,
    ),
    Goal("2 processes >= 1.6x one", "conveyor.2p.64", "conveyor.64", "calls_per_s", 1.6),
    Goal(
        "2 processes >= 1.6x one, a model of 2 ms of Python per call",
        "conveyor.cpu.2p.64",
        "conveyor.cpu.64",
        "calls_per_s",
        1.6,
        cpu=False,  # the point is spreading the model's CPU over more cores
    ),
    Goal(
        "1 MiB >= 0.7x the floor's bytes/s", "conveyor.1mib.64", "floor.1mib.64", "bytes_per_s", 0.7
    ),
    Goal(
        "trio >= 0.7x asyncio, 64 in flight", "conveyor.trio.64", "conveyor.64", "calls_per_s", 0.7
    ),
    Goal(
        "batching: max_batch_size 32 >= 5x 1, a per-call-cost model, 256 in flight",
        "conveyor.batch.32",
        "conveyor.batch.1",
        "calls_per_s",
        5.0,
        cpu=False,  # the unbatched case waits on the model's 5 ms, not on CPU
    ),
)
MAX_CONNECTIONS = 4  # goal: 1,000 in flight on <= 4 connections per client


@dataclass(frozen=True)
class Settings:
    rounds: int
    sequential: int  # calls per sequential case, 100 B
    sequential_mib: int  # calls per sequential case, 1 MiB
    seconds: float  # per throughput case
    warmup: float  # seconds of load before each throughput case
    chunks: int  # chunks per predict_stream request
    profile_seconds: float
    bursts: int  # bursts of 32 calls per round (conveyor.batch.burst)

    @classmethod
    def full(cls) -> Settings:
        return cls(5, 1000, 60, 3.0, 0.3, 200, 10.0, 20)

    @classmethod
    def quick(cls) -> Settings:
        return cls(1, 100, 10, 0.5, 0.1, 50, 2.0, 3)


@dataclass
class Env:
    """What the cases run against: the server and the worker processes."""

    url: str
    redis_pid: int
    floor: Process | None
    fleets: dict[str, list[Process]]
    observer: SyncRedis  # for INFO commandstats

    def meter(self, workers: list[Process]) -> Meter:
        pids = {"client": [os.getpid()], "worker": [w.pid for w in workers]}
        return Meter({**pids, "redis": [self.redis_pid]}, self.observer)


def fleet_of(case: str) -> str:
    """The worker fleet a Conveyor case runs against."""
    if case.startswith("conveyor.cpu."):
        return "cpu2" if ".2p." in case else "cpu1"
    if ".2p." in case:
        return "echo2"
    if case.startswith("conveyor.stream."):
        return "chunks"
    if case.startswith("conveyor.2models."):
        return "both"
    if case == "conveyor.batch.1":
        return "batch1"
    if case.startswith("conveyor.batch."):
        return "batch32"
    return "echo1"


# -- payloads ------------------------------------------------------------------------------------


def _small_request() -> InferenceRequest:
    arr = np.arange(SMALL_BYTES // 4, dtype=np.float32)
    return InferenceRequest(inputs=[NumpyCodec.encode_input("x", arr)])


def _mib_array() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(MIB // 4, dtype=np.float32)


# -- floor cases ---------------------------------------------------------------------------------


async def _floor(env: Env, s: Settings, case: str) -> Result:
    assert env.floor is not None
    meter = env.meter([env.floor])
    big = case.startswith("floor.1mib")
    payload = _mib_array().data.cast("B") if big else np.random.bytes(SMALL_BYTES)

    async with FloorClient(env.url) as client:

        async def call() -> object:
            reply = await client.call(payload)
            if big:
                return np.frombuffer(reply, dtype=np.float32)
            return reply

        reply = np.frombuffer(await client.call(payload), np.uint8)  # first call: worker is up
        assert reply.nbytes == len(payload)
        for _ in range(20):
            await call()
        return await _measure(case, call, s, meter, big)


async def _measure(
    case: str, call: Callable[[], Awaitable[object]], s: Settings, meter: Meter, big: bool
) -> Result:
    in_flight = case.rsplit(".", 1)[-1]
    if in_flight == "seq":
        result = await sequential(case, call, s.sequential_mib if big else s.sequential, meter)
    else:
        await load(case, call, int(in_flight), s.warmup, meter)
        result = await load(case, call, int(in_flight), s.seconds, meter)
    if big:
        assert result.calls_per_s is not None
        result.bytes_per_s = result.calls_per_s * MIB
    return result


# -- Conveyor cases ------------------------------------------------------------------------------


async def _conveyor(env: Env, s: Settings, case: str) -> Result:
    prefix, _, models = FLEETS[fleet_of(case)]
    meter = env.meter(env.fleets[fleet_of(case)])
    big = case.startswith("conveyor.1mib")
    if big:
        request = InferenceRequest(inputs=[NumpyCodec.encode_input("x", _mib_array())])
    else:
        request = _small_request()

    async with Client(env.url, prefix=prefix) as client:
        model = client.model(models[0])

        async def call() -> object:
            response = await model.predict(request)
            if big:
                return NumpyCodec.decode_output(response.outputs[0])
            return response

        first = await model.predict(request)
        if models[0] == "bench-echo":
            assert first.outputs[0].shape == request.inputs[0].shape
        for _ in range(20):
            await call()
        return await _measure(case, call, s, meter, big)


async def _stream(env: Env, s: Settings, case: str) -> Result:
    streams = int(case.rsplit(".", 1)[-1])
    prefix, _, _ = FLEETS[fleet_of(case)]
    meter = env.meter(env.fleets[fleet_of(case)])
    request = InferenceRequest(
        inputs=[RequestInput(name="n", shape=[1], datatype="INT64", data=[s.chunks])]
    )
    chunks = 0

    async with Client(env.url, prefix=prefix) as client:
        model = client.model("bench-chunks")

        async def requests() -> AsyncIterator[InferenceRequest]:
            yield request

        async def call() -> object:
            nonlocal chunks
            async for _ in model.predict_stream(requests()):
                chunks += 1
            return None

        await call()
        await load(case, call, streams, s.warmup, meter)
        chunks = 0
        result = await load(case, call, streams, s.seconds, meter)
    result.extra["streams"] = result.calls
    result.extra["chunks_per_stream"] = s.chunks
    per_chunk = result.calls / max(chunks, 1)
    result.cpu_us_per_call = {k: v * per_chunk for k, v in result.cpu_us_per_call.items()}
    result.commands_per_call = {k: v * per_chunk for k, v in result.commands_per_call.items()}
    result.calls, result.calls_per_s, result.unit = chunks, chunks / result.seconds, "chunks/s"
    return result


async def _thousand(env: Env, s: Settings, case: str) -> Result:
    """1,000 callers at once; meanwhile CLIENT LIST counts this client's connections."""
    prefix, _, _ = FLEETS[fleet_of(case)]
    meter = env.meter(env.fleets[fleet_of(case)])
    request = _small_request()
    peak = 0
    samples = 0

    async with Client(env.url, prefix=prefix) as client:
        model = client.model("bench-echo")
        name = f"conveyor-client-{client.client_id}"
        observer = SyncRedis.from_url(env.url)

        def count() -> int:
            return sum(1 for c in observer.client_list() if c.get("name") == name)

        async def call() -> object:
            return await model.predict(request, timeout=60)

        async def sample(done: anyio.Event) -> None:
            nonlocal peak, samples
            while not done.is_set():
                peak = max(peak, await anyio.to_thread.run_sync(count))
                samples += 1
                await anyio.sleep(0.05)

        await call()
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample, done)
            result = await load(case, call, 1000, max(s.seconds, 1.0), meter)
            done.set()
        observer.close()
    result.extra["max_connections"] = peak
    result.extra["client_list_samples"] = samples
    return result


# -- batching cases ------------------------------------------------------------------------------


def _batch_request(value: float = 1.0) -> InferenceRequest:
    """One row of 25 float32 (100 B): requests merge along the first axis."""
    row = np.full((1, SMALL_BYTES // 4), value, dtype=np.float32)
    return InferenceRequest(inputs=[NumpyCodec.encode_input("x", row)])


async def _batching(env: Env, s: Settings, case: str) -> Result:
    """256 in flight against max_batch_size 1 or 32: calls/s, and the mean batch the worker
    ran (its metrics); or bursts of 32 calls (``conveyor.batch.burst``)."""
    fleet = fleet_of(case)
    prefix, _, _ = FLEETS[fleet]
    workers = env.fleets[fleet]
    meter = env.meter(workers)
    request = _batch_request()

    async with Client(env.url, prefix=prefix) as client:
        model = client.model(BATCH_MODEL)

        async def call() -> object:
            response = await model.predict(request, timeout=120)
            y = NumpyCodec.decode_output(response.outputs[0])
            if y.shape != (1, SMALL_BYTES // 4) or y[0, 0] != 2.0:
                raise RuntimeError(f"bad answer: {y!r}")
            return response

        await call()
        if case == "conveyor.batch.burst":
            return await _bursts(case, call, s, meter, workers)
        # Short, for the suite's time budget: warm up with a batch's worth in flight (at 256
        # an unbatched warm-up would take ~2 s to drain), then at most 2 s of load.
        await load(case, call, BATCH, s.warmup, meter)
        before = await anyio.to_thread.run_sync(harness.batch_sizes, workers)
        result = await load(case, call, 256, min(s.seconds, 2.0), meter)
        after = await anyio.to_thread.run_sync(harness.batch_sizes, workers)
    if after[1] > before[1]:
        result.extra["mean_batch"] = (after[0] - before[0]) / (after[1] - before[1])
    return result


async def _bursts(
    case: str,
    call: Callable[[], Awaitable[object]],
    s: Settings,
    meter: Meter,
    workers: list[Process],
) -> Result:
    """After one burst of warm-up, ``s.bursts`` times: one call of 32 rows to the model in this
    process (the model's own time), then 32 calls sent at once to the worker, each timed from
    send to answer."""
    settings = load_model_settings(harness.MODELS / BATCH_MODEL)
    model = settings.implementation(settings)
    await model.load()
    rows = InferenceRequest(
        inputs=[NumpyCodec.encode_input("x", np.ones((BATCH, SMALL_BYTES // 4), np.float32))]
    )
    model_calls: list[float] = []
    latencies: list[float] = []

    async def timed() -> None:
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)

    async with anyio.create_task_group() as tg:  # warm-up: the worker's first batches are slow
        for _ in range(BATCH):
            tg.start_soon(timed)
    latencies.clear()
    before = await anyio.to_thread.run_sync(harness.batch_sizes, workers)
    meter.start()
    begin = time.perf_counter()
    for _ in range(s.bursts):
        start = time.perf_counter()
        await model.predict(rows)
        model_calls.append(time.perf_counter() - start)
        async with anyio.create_task_group() as tg:
            for _ in range(BATCH):
                tg.start_soon(timed)
    elapsed = time.perf_counter() - begin
    meter.stop()
    after = await anyio.to_thread.run_sync(harness.batch_sizes, workers)
    calls = len(latencies)
    result = Result(
        case,
        p50_ms=float(np.percentile(latencies, 50)) * 1e3,
        p99_ms=float(np.percentile(latencies, 99)) * 1e3,
        calls=calls,
        seconds=elapsed,
        cpu_us_per_call={role: used / calls * 1e6 for role, used in meter.used.items()},
    )
    result.extra["model_call_p99_ms"] = float(np.percentile(model_calls, 99)) * 1e3
    result.extra["max_batch_time_ms"] = settings.max_batch_time * 1e3
    if after[1] > before[1]:
        result.extra["mean_batch"] = (after[0] - before[0]) / (after[1] - before[1])
    return result


# -- running -------------------------------------------------------------------------------------


def _run_case(env: Env, s: Settings, case: str) -> Result:
    if case.startswith("floor."):
        return anyio.run(_floor, env, s, case)
    if case.startswith("conveyor.stream."):
        return anyio.run(_stream, env, s, case)
    if case == "conveyor.1000":
        return anyio.run(_thousand, env, s, case)
    if case.startswith("conveyor.batch."):
        return anyio.run(_batching, env, s, case)
    if case == "conveyor.trio.64":
        return anyio.run(_conveyor, env, s, case, backend="trio")
    return anyio.run(_conveyor, env, s, case)


@contextlib.contextmanager
def _environment(cases: list[str]) -> Iterator[Env]:
    with RedisServer() as server, contextlib.ExitStack() as stack:
        url = server.url
        floor = None
        if any(c.startswith("floor.") for c in cases):
            floor = harness.floor_worker(url)
            stack.callback(floor.stop)
        needed = {fleet_of(c) for c in cases if c.startswith(("conveyor.", "profile"))}
        fleets: dict[str, list[Process]] = {}
        for name in FLEETS:
            if name in needed:
                prefix, processes, models = FLEETS[name]
                models_dir = harness.MODELS
                if name in FLEET_SETTINGS:  # a copy of its folders, with other settings
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
                    models_dir = Path(tmp)
                    for model in models:
                        harness.model_copy(models_dir, model, **FLEET_SETTINGS[name])
                fleets[name] = [
                    harness.conveyor_worker(
                        url,
                        prefix,
                        f"{name}-w{i}",
                        models,
                        concurrency=FLEET_CONCURRENCY.get(name, 64),
                        models_dir=models_dir,
                        metrics=name.startswith("batch"),
                    )
                    for i in range(1, processes + 1)
                ]
                for worker in fleets[name]:
                    stack.callback(worker.stop)
        for workers in fleets.values():  # started all at once; now wait for each
            for worker in workers:
                worker.wait_for_log("worker.started")
        observer = stack.enter_context(SyncRedis.from_url(url))
        yield Env(url, server.pid, floor, fleets, observer)


def _redis_version(url: str) -> str:
    with SyncRedis.from_url(url) as redis:
        info = redis.info("server")
    return f"{info['redis_version']} ({info.get('executable', '?')})"


def _select(only: list[str] | None, quick: bool) -> list[str]:
    if not only:
        return [c for c in CASES if not (quick and c.startswith("profile"))]
    chosen = [c for c in CASES if any(fnmatch.fnmatch(c, p) or c == p for p in only)]
    unknown = [p for p in only if not any(fnmatch.fnmatch(c, p) for c in CASES)]
    if unknown or not chosen:
        raise SystemExit(f"unknown case(s) {unknown or only}; cases: {', '.join(CASES)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this case (repeatable; glob patterns: 'conveyor.*'). Cases: "
        + ", ".join(CASES),
    )
    parser.add_argument("--rounds", type=int, help="rounds of every case (default 5, quick 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="save every figure here")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument(
        "--profile-dir", type=Path, help="keep py-spy's raw output here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    s = Settings.quick() if args.quick else Settings.full()
    if args.rounds:
        s = dataclasses.replace(s, rounds=args.rounds)
    cases = _select(args.only, args.quick)
    console = Console(width=160)
    started = time.monotonic()
    rounds: list[list[Result]] = []
    profiles: list[dict[str, Any]] = []
    log_noise: dict[str, list[str]] = {}
    with _environment(cases) as env:
        info = harness.machine(_redis_version(env.url))
        for key, value in info.items():
            console.print(f"[bold]{key}:[/bold] {value}")
        measured = [c for c in cases if not c.startswith("profile")]
        for index in range(s.rounds if measured else 0):
            console.print(f"round {index + 1}/{s.rounds}: ", end="")
            results = []
            # Every other round runs backwards (ABBA): a case's place in the round (after a
            # heavy case, say) must not favour one side of a ratio.
            for case in measured if index % 2 == 0 else measured[::-1]:
                results.append(_run_case(env, s, case))
                console.print(case, end=" ")
            console.print()
            rounds.append(results)
        profile_dir = args.profile_dir
        for case in (c for c in cases if c.startswith("profile")):
            if profile_dir is None:  # both profiles in one place
                profile_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-profile-"))
            in_flight = 1 if case == "profile.seq" else 64
            profiles.append(profiling.run(env, in_flight, s.profile_seconds, profile_dir, console))
        for worker in (w for workers in env.fleets.values() for w in workers):
            log_noise[worker.name] = harness.log_lines_after_start(worker)
        info["load average (end)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = _summarise(rounds)
    goals = _goals(rounds, summary)
    console.print(_figures_table(summary, rounds))
    console.print(_goals_table(goals))
    for profile in profiles:
        profiling.print_summary(profile, console)
    for name, lines in log_noise.items():
        if lines:
            console.print(f"[yellow]{name} logged {len(lines)} lines while measuring[/yellow]")
    console.print(f"{len(rounds)} rounds, {time.monotonic() - started:.0f} s in all")
    if args.markdown:
        print()
        print(markdown(summary, goals, rounds))
    if args.json:
        out = {
            "machine": info,
            "settings": asdict(s),
            "summary": summary,
            "goals": goals,
            "rounds": [[asdict(r) for r in results] for results in rounds],
            "profiles": profiles,
            "worker_log_lines_while_measuring": log_noise,
        }
        args.json.write_text(json.dumps(out, indent=2))
        console.print(f"saved {args.json}")


# -- summaries -----------------------------------------------------------------------------------

_FIGURES = ("p50_ms", "p99_ms", "calls_per_s", "bytes_per_s")


def _summarise(rounds: list[list[Result]]) -> dict[str, dict[str, Any]]:
    """Per case: the median over rounds of each figure (and of each CPU share)."""
    by_case: dict[str, list[Result]] = {}
    for results in rounds:
        for r in results:
            by_case.setdefault(r.case, []).append(r)
    summary: dict[str, dict[str, Any]] = {}
    for case, results in by_case.items():
        row: dict[str, Any] = {"unit": results[0].unit, "rounds": len(results)}
        for name in _FIGURES:
            values = [getattr(r, name) for r in results if getattr(r, name) is not None]
            row[name] = statistics.median(values) if values else None
        row["cpu_us_per_call"] = {
            role: statistics.median(r.cpu_us_per_call[role] for r in results)
            for role in results[0].cpu_us_per_call
        }
        row["commands_per_call"] = {
            name: statistics.median(r.commands_per_call.get(name, 0.0) for r in results)
            for name in results[0].commands_per_call
        }
        row["extra"] = {
            key: (max if key == "max_connections" else statistics.median)(
                r.extra[key] for r in results
            )
            for key in results[0].extra
        }
        summary[case] = row
    return summary


def _ratios(rounds: list[list[Result]], case: str, reference: str, figure: str) -> list[float]:
    """The ratio case/reference of one figure, in each round that measured both."""
    out = []
    for results in rounds:
        by_case = {r.case: r for r in results}
        if case in by_case and reference in by_case:
            a, b = _figure(by_case[case], figure), _figure(by_case[reference], figure)
            if a is not None and b:
                out.append(a / b)
    return out


def _figure(result: Result, figure: str) -> float | None:
    """A figure of a result: a field, or ``cpu:ROLE`` for the CPU per call of a role's
    processes (client, worker, redis)."""
    if figure.startswith("cpu:"):
        return result.cpu_us_per_call.get(figure.removeprefix("cpu:"))
    value: float | None = getattr(result, figure)
    return value


def _cpu_ratios(rounds: list[list[Result]], case: str, reference: str) -> list[float]:
    """Per round: CPU per call of every process (client + workers + Redis), reference / case.

    While client, workers and Redis share the machine's cores and keep them busy, this is the
    throughput ratio to expect, and it moves much less with other jobs' load than calls/s do.
    """
    out = []
    for results in rounds:
        by_case = {r.case: r for r in results}
        if case in by_case and reference in by_case:
            a = sum(by_case[case].cpu_us_per_call.values())
            b = sum(by_case[reference].cpu_us_per_call.values())
            if a:
                out.append(b / a)
    return out


def _goals(rounds: list[list[Result]], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []
    for goal in GOALS:
        ratios = _ratios(rounds, goal.case, goal.reference, goal.figure)
        if not ratios:
            continue
        ratio = statistics.median(ratios)
        met = ratio <= goal.target if goal.at_most else ratio >= goal.target
        cpu = [] if goal.at_most or not goal.cpu else _cpu_ratios(rounds, goal.case, goal.reference)
        goals.append(
            {
                "goal": goal.text,
                "ratio": ratio,
                "range": [min(ratios), max(ratios)],
                "met": met,
                "cpu_ratio": statistics.median(cpu) if cpu else None,
                "cpu_range": [min(cpu), max(cpu)] if cpu else None,
                "case": goal.case,
                "reference": goal.reference,
            }
        )
    bounds = _burst_bounds(rounds)
    if bounds:
        ratios = [p99 / bound for p99, bound in bounds]
        ratio = statistics.median(ratios)
        row = summary["conveyor.batch.burst"]
        goals.append(
            {
                "goal": f"batching: p99 of a burst of {BATCH} <= max_batch_time + one model call",
                "measured": f"{row['p99_ms']:.1f} ms vs {row['extra']['max_batch_time_ms']:.0f}"
                f" + {row['extra']['model_call_p99_ms']:.1f} ms: {ratio:.2f}x"
                f" (rounds: {min(ratios):.2f}-{max(ratios):.2f})",
                "ratio": ratio,
                "range": [min(ratios), max(ratios)],
                "met": ratio <= 1.0,
                "case": "conveyor.batch.burst",
            }
        )
    if "conveyor.1000" in summary:
        peak = summary["conveyor.1000"]["extra"]["max_connections"]
        goals.append(
            {
                "goal": f"1,000 in flight on <= {MAX_CONNECTIONS} connections per client",
                "connections": peak,
                "met": 0 < peak <= MAX_CONNECTIONS,
                "case": "conveyor.1000",
            }
        )
    return goals


def _burst_bounds(rounds: list[list[Result]]) -> list[tuple[float, float]]:
    """Per round: (p99 of the burst calls, max_batch_time + p99 of one model call), in ms."""
    out = []
    for results in rounds:
        for r in results:
            if r.case == "conveyor.batch.burst" and r.p99_ms is not None:
                bound = r.extra["max_batch_time_ms"] + r.extra["model_call_p99_ms"]
                out.append((r.p99_ms, bound))
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _row(case: str, row: dict[str, Any], rounds: list[list[Result]]) -> list[str]:
    rate = "" if row["calls_per_s"] is None else f"{_fmt(row['calls_per_s'])} {row['unit']}"
    mbs = "" if row["bytes_per_s"] is None else _fmt(row["bytes_per_s"] / 1e6)
    cpu = row["cpu_us_per_call"]
    cpu_text = " / ".join(_fmt(cpu.get(role), 0) for role in ("client", "worker", "redis"))
    ratio = ""
    if case in REFERENCES:
        reference, figure = REFERENCES[case]
        ratios = _ratios(rounds, case, reference, figure)
        if ratios:
            what = {"p50_ms": "p50", "calls_per_s": "calls/s", "bytes_per_s": "B/s"}[figure]
            ratio = f"{statistics.median(ratios):.2f}x {reference} {what}"
    if case == "conveyor.1000":
        ratio = f"{row['extra']['max_connections']:.0f} connections (max)"
    if "mean_batch" in row["extra"]:
        ratio = ", ".join(x for x in (ratio, f"mean batch {row['extra']['mean_batch']:.1f}") if x)
    if case == "conveyor.batch.burst":
        bound = row["extra"]["max_batch_time_ms"] + row["extra"]["model_call_p99_ms"]
        ratio += f"; p99 bound {bound:.1f} ms"
    commands = _fmt(row["commands_per_call"].get("all"), 1)
    return [case, _fmt(row["p50_ms"]), _fmt(row["p99_ms"]), rate, mbs, cpu_text, commands, ratio]


_HEADER = (
    "case",
    "p50 ms",
    "p99 ms",
    "rate",
    "MB/s",
    "CPU us/call client/worker/redis",
    "Redis cmds/call",
    "ratio",
)


def _figures_table(summary: dict[str, dict[str, Any]], rounds: list[list[Result]]) -> Table:
    table = Table(title=f"Figures (median of {len(rounds)} rounds)")
    for i, name in enumerate(_HEADER):
        table.add_column(name, justify="left" if i in (0, len(_HEADER) - 1) else "right")
    for case in CASES:
        if case in summary:
            table.add_row(*_row(case, summary[case], rounds))
    return table


_GOAL_HEADER = ("goal", "measured", "from CPU per call", "result")


def _goal_cells(goal: dict[str, Any]) -> list[str]:
    cpu = ""
    if "connections" in goal:
        measured = f"{goal['connections']:.0f} connections"
    elif "measured" in goal:
        measured = goal["measured"]
    else:
        low, high = goal["range"]
        measured = f"{goal['ratio']:.2f}x (rounds: {low:.2f}-{high:.2f})"
        if goal["cpu_ratio"] is not None:
            low, high = goal["cpu_range"]
            cpu = f"{goal['cpu_ratio']:.2f}x ({low:.2f}-{high:.2f})"
    return [goal["goal"], measured, cpu, "met" if goal["met"] else "NOT met"]


def _goals_table(goals: list[dict[str, Any]]) -> Table:
    table = Table(title="Goals (ratios measured in the same run)")
    for name in _GOAL_HEADER:
        table.add_column(name)
    for goal in goals:
        cells = _goal_cells(goal)
        style = "green" if goal["met"] else "red"
        table.add_row(*cells[:3], f"[{style}]{cells[3]}[/{style}]")
    return table


def markdown(
    summary: dict[str, dict[str, Any]], goals: list[dict[str, Any]], rounds: list[list[Result]]
) -> str:
    """The two tables as Markdown, for bench/README.md."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for case in CASES:
        if case in summary:
            cells = _row(case, summary[case], rounds)
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| " + " | ".join(_GOAL_HEADER) + " |", "|---|---|---|---|"]
    for goal in goals:
        cells = _goal_cells(goal)
        cells[3] = f"**{cells[3]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
