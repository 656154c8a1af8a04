"""Single-item calls into one model, in process and on the fleet, side by side: the cases of
issue 14 that ``bench.device`` (a CPU stand-in for a device model) and ``bench.embeddings``
(the real MiniLM) share.

Cases, measured in turns round after round (who goes first changes every round), so that a
machine busier at one moment weighs on all of them alike:

- **in process, batch 1** and **in process, batch B** (B = ``max_batch_size``; the best
  batch for these models, whose cost per row falls with the batch): the model loaded in the
  bench process, ``predict`` called one call after the other, as its author would;
- **fleet, P processes, unbatched**: P ``conveyor worker`` processes serving a copy of the
  model folder with ``max_batch_size`` 1; single-item calls, ``in_flight_unbatched(P)`` in
  flight. Each process gets the environment ``conveyor worker --processes P`` gives its
  children (``worker_env``: its share of the cores for numeric thread pools, unless set);
- **fleet, P processes, adaptive batching**: the same processes serve a second copy, under
  another name, with ``max_batch_size`` B; single-item calls, ``--in-flight-batched`` in flight;
- optionally **fleet, P processes, R rows a call** (the caller batches; no adaptive batching).

Each fleet round warms up (not counted), then counts the calls answered in a window of
``--seconds``; the workers' Prometheus metrics, read at both ends of the window, give the
mean batch the model ran and the share of the jobs each process ran. The calls still in flight
at the end are awaited, not counted. ``--clients K`` drives the load from K client processes
(for hosts where one Python client is the limit).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import multiprocessing.pool
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from redis import Redis as SyncRedis

from bench.harness import Process, cpu_seconds
from conveyor.client import Client
from conveyor.embedded import free_port
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker.supervisor import worker_env

CALL_TIMEOUT_S = 300.0

# -- the workers' metrics ------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(port: int) -> dict[tuple[str, str], float]:
    """(sample name, model label) -> value, for the samples this bench reads."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels = match.group(1), dict(_LABEL.findall(match.group(2)))
        if name == "conveyor_worker_jobs_total":
            if labels.get("method") != "predict" or labels.get("outcome") != "ok":
                continue
        elif name not in ("conveyor_worker_batch_size_sum", "conveyor_worker_batch_size_count"):
            continue
        found[(name, labels.get("model", ""))] = float(match.group(3))
    return found


@dataclass
class Fleet:
    """P worker processes, each serving every folder of ``folders``, with metrics."""

    processes: int
    workers: list[Process]

    @classmethod
    def start(
        cls, url: str, prefix: str, folders: Sequence[Path], processes: int, concurrency: int
    ) -> Fleet:
        workers = []
        env = worker_env(url, processes)  # as `conveyor worker --processes P` starts them
        for index in range(processes):
            port = free_port()
            argv = [sys.executable, "-m", "conveyor.cli", "worker", *map(str, folders)]
            argv += ["--redis", url, "--prefix", prefix, "--concurrency", str(concurrency)]
            argv += ["--name", f"{prefix}-{index}", "--log-level", "info"]
            argv += ["--metrics-port", str(port)]
            workers.append(Process(f"{prefix}-{index}", argv, metrics_port=port, env=env))
        return cls(processes, workers)

    def wait_started(self, timeout: float) -> None:
        for worker in self.workers:
            worker.wait_for_log("worker.started", timeout=timeout)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def snapshot(self) -> list[dict[tuple[str, str], float]]:
        """Each worker's samples, and its CPU seconds so far under ("cpu", "")."""
        out = []
        for worker in self.workers:
            assert worker.metrics_port is not None
            samples = scrape(worker.metrics_port)
            samples["cpu", ""] = cpu_seconds(worker.pid)
            out.append(samples)
        return out


# -- tallies -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """The rounds of one case, added up."""

    name: str
    rows_per_call: int = 1
    in_flight: int = 0  # fleet cases
    processes: int = 0  # fleet cases; 0: in process
    max_batch_size: int = 1
    rows: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)  # rows/s of each round
    latencies: list[float] = field(default_factory=list)
    batched: float = 0.0  # requests the batcher took, and in how many model calls
    batches: float = 0.0
    jobs: list[float] = field(default_factory=list)  # jobs each process ran
    worker_cpu: float = 0.0  # CPU seconds of the workers, all processes
    redis_reads: float = 0.0  # socket reads Redis served (every client's): ~ round trips

    def add(self, rows: int, seconds: float) -> None:
        self.rows += rows
        self.seconds += seconds
        self.rates.append(rows / seconds if seconds else 0.0)

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def mean_batch(self) -> float | None:
        return self.batched / self.batches if self.batches else None

    @property
    def cpu_per_call(self) -> float | None:
        """Workers' CPU seconds per call (a call is ``rows_per_call`` rows)."""
        calls = self.rows / self.rows_per_call
        return self.worker_cpu / calls if self.worker_cpu and calls else None

    @property
    def reads_per_call(self) -> float | None:
        """Socket reads Redis served a call, clients' and workers' together (INFO stats
        ``total_reads_processed``): about the round trips a call costs both sides."""
        calls = self.rows / self.rows_per_call
        return self.redis_reads / calls if self.redis_reads and calls else None

    def shares(self) -> str:
        total = sum(self.jobs)
        if not total:
            return "-"
        return ", ".join(f"{n / total:.0%}" for n in sorted(self.jobs, reverse=True))

    def percentile(self, q: float) -> float | None:
        return (
            statistics.quantiles(self.latencies, n=100)[q - 1] if len(self.latencies) > 1 else None
        )


# -- in process ----------------------------------------------------------------------------------


def in_process_round(
    call: Callable[[int], object], rows: int, seconds: float, tally: Tally
) -> None:
    """``call(rows)`` one call after the other for ``seconds``."""
    calls = 0
    start = time.perf_counter()
    stop_at = start + seconds
    while time.perf_counter() < stop_at:
        call(rows)
        calls += 1
    tally.add(calls * rows, time.perf_counter() - start)


# -- the fleet's load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One client's share of a fleet round. ``factory`` names a function ``(i, rows) ->
    InferenceRequest`` as ``module:function`` (a client process imports it)."""

    url: str
    prefix: str
    model: str
    factory: str
    rows: int
    in_flight: int
    start_at: float  # time.time() of the window's start (warm-up before)
    stop_at: float
    offset: int


def _factory(name: str) -> Callable[[int, int], InferenceRequest]:
    module, _, attr = name.partition(":")
    function: Callable[[int, int], InferenceRequest] = getattr(
        importlib.import_module(module), attr
    )
    return function


def _check(response: InferenceResponse, request: InferenceRequest, rows: int) -> None:
    shape = response.outputs[0].shape if response.outputs else None
    if response.id != request.id or not shape or shape[0] != rows:
        raise RuntimeError(f"bad answer to {request.id}: id {response.id}, shape {shape}")


async def drive(load: Load) -> tuple[int, list[float]]:
    """Single-item (or ``rows``-item) calls, ``in_flight`` at a time, until ``stop_at``:
    (calls answered within the window, their latencies)."""
    make = _factory(load.factory)
    counted: list[float] = []
    numbers = iter(range(load.offset, sys.maxsize))
    async with Client(load.url, prefix=load.prefix, timeout=CALL_TIMEOUT_S) as client:
        model = client.model(load.model)

        async def caller() -> None:
            for i in numbers:
                if time.time() >= load.stop_at:
                    return
                request = make(i, load.rows)
                request.id = f"{load.offset}-{i}"
                sent = time.perf_counter()
                response = await model.predict(request)
                done = time.time()
                _check(response, request, load.rows)
                if load.start_at <= done < load.stop_at:
                    counted.append(time.perf_counter() - sent)

        async with anyio.create_task_group() as tg:
            for _ in range(load.in_flight):
                tg.start_soon(caller)
    return len(counted), counted


def drive_sync(load: Load) -> tuple[int, list[float]]:
    return anyio.run(drive, load)


class Clients:
    """Where the fleet's load comes from: this process (1 client) or a pool of client
    processes (spawned: the bench process may hold a model and a GPU context)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: multiprocessing.pool.Pool | None = None
        if count > 1:
            self._pool = multiprocessing.get_context("spawn").Pool(count)

    async def run(self, loads: list[Load]) -> list[tuple[int, list[float]]]:
        if self._pool is None:
            return [await drive(loads[0])]
        pool = self._pool
        return await anyio.to_thread.run_sync(lambda: pool.map(drive_sync, loads))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


async def fleet_round(
    fleet: Fleet,
    clients: Clients,
    load: Load,
    warmup: float,
    seconds: float,
    tally: Tally,
) -> None:
    """One round of one fleet case: warm-up, a window of ``seconds``, the rest awaited."""
    slack = 1.0 if clients.count > 1 else 0.0  # client processes connecting
    start_at = time.time() + slack + warmup
    stop_at = start_at + seconds
    shares = [load.in_flight // clients.count] * clients.count
    shares[0] += load.in_flight - sum(shares)
    loads = [
        Load(
            **{
                **load.__dict__,
                "in_flight": n,
                "start_at": start_at,
                "stop_at": stop_at,
                "offset": load.offset + k * 10_000_000,
            }
        )
        for k, n in enumerate(shares)
        if n
    ]
    snapshots: list[list[dict[tuple[str, str], float]]] = []
    reads: list[int] = []

    def redis_reads() -> int:
        with SyncRedis.from_url(load.url) as probe:
            return int(probe.info("stats")["total_reads_processed"])

    async def snapshot_at(when: float) -> None:
        await anyio.sleep(max(0.0, when - time.time()))
        snapshots.append(await anyio.to_thread.run_sync(fleet.snapshot))
        reads.append(await anyio.to_thread.run_sync(redis_reads))

    async with anyio.create_task_group() as tg:
        tg.start_soon(snapshot_at, start_at)
        tg.start_soon(snapshot_at, stop_at)
        results = await clients.run(loads)
    calls = sum(n for n, _ in results)
    tally.add(calls * load.rows, seconds)
    for _, latencies in results:
        tally.latencies += latencies
    before, after = snapshots
    tally.redis_reads += reads[1] - reads[0]
    tally.worker_cpu += sum(a["cpu", ""] - b["cpu", ""] for b, a in zip(before, after, strict=True))
    jobs = [
        a.get(("conveyor_worker_jobs_total", load.model), 0.0)
        - b.get(("conveyor_worker_jobs_total", load.model), 0.0)
        for b, a in zip(before, after, strict=True)
    ]
    tally.jobs = [x + y for x, y in zip(tally.jobs, jobs, strict=True)] if tally.jobs else jobs
    for key in ("sum", "count"):
        sample = (f"conveyor_worker_batch_size_{key}", load.model)
        got = sum(
            a.get(sample, 0.0) - b.get(sample, 0.0) for b, a in zip(before, after, strict=True)
        )
        if key == "sum":
            tally.batched += got
        else:
            tally.batches += got


# -- the report ----------------------------------------------------------------------------------


def round_ratios(a: Tally, b: Tally) -> str:
    ratios = [x / y for x, y in zip(a.rates, b.rates, strict=False) if y]
    if len(ratios) < 2:
        return ""
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"


def _per_call(count: float | None) -> str:
    return "" if count is None else f"{count:.2f}"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:,.1f}"


def report(
    unit: str,
    one: Tally,
    best: Tally,
    fleet: list[Tally],
    max_batch_size: int,
    info: dict[str, str],
) -> list[str]:
    """Markdown: the cases, then the goals of issue 14 (met or not, with the figure)."""
    lines = [
        f"| case | {unit}/s | rounds: min-max | x in process, batch 1 | x in process, batch "
        f"{best.rows_per_call} | mean batch | share of jobs by process | p50 ms | p99 ms "
        "| worker CPU ms per call | Redis reads per call |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for tally in [one, best, *fleet]:
        spread = f"{min(tally.rates):,.0f}-{max(tally.rates):,.0f}" if tally.rates else ""
        mean = tally.mean_batch
        lines.append(
            f"| {tally.name} | {tally.per_second:,.1f} | {spread} "
            f"| {tally.per_second / one.per_second:.2f}x "
            f"| {tally.per_second / best.per_second:.2f}x "
            f"| {'' if mean is None else f'{mean:.1f}'} | {tally.shares()} "
            f"| {_ms(tally.percentile(50))} | {_ms(tally.percentile(99))} "
            f"| {_ms(tally.cpu_per_call)} | {_per_call(tally.reads_per_call)} |"
        )
    lines += ["", "| goal (issue 14) | measured | met |", "|---|---|---|"]
    ours = [t for t in fleet if t.processes > 0]  # not a peer's row
    unbatched = {t.processes: t for t in ours if t.max_batch_size == 1 and t.rows_per_call == 1}
    batched = {t.processes: t for t in ours if t.max_batch_size > 1}
    for processes, tally in sorted(unbatched.items()):
        goal = 0.9 if processes == 1 else 0.7 * processes
        ratio = tally.per_second / one.per_second
        lines.append(
            f"| unbatched single-item calls, {_processes(processes)} >= {goal:.1f}x in process "
            f"(batch 1) | {ratio:.2f}x{round_ratios(tally, one)} "
            f"| {'**met**' if ratio >= goal else '**not met**'} |"
        )
    for processes, tally in sorted(batched.items()):
        ratio = tally.per_second / best.per_second
        goal = 0.8 if processes == 1 else 3.0 if processes == 8 else None
        if goal is not None:
            lines.append(
                f"| adaptive batching, {_processes(processes)} >= {goal:g}x in process "
                f"(batch {best.rows_per_call}) | {ratio:.2f}x{round_ratios(tally, best)} "
                f"| {'**met**' if ratio >= goal else '**not met**'} |"
            )
        mean = tally.mean_batch
        per_process = tally.in_flight / processes
        if mean is not None:
            enough = per_process >= max_batch_size
            verdict = (
                ("**met**" if mean >= 0.9 * max_batch_size else "**not met**")
                if enough
                else f"n/a: {per_process:.0f} calls in flight per process"
            )
            lines.append(
                f"| mean batch >= 0.9 x {max_batch_size}, {_processes(processes)} "
                f"| {mean:.1f} | {verdict} |"
            )
    lines.append("")
    lines += [f"- {key}: {value}" for key, value in info.items()]
    return lines


def save(path: Path, tallies: list[Tally], info: dict[str, str]) -> None:
    path.write_text(json.dumps({"machine": info, "cases": [t.__dict__ for t in tallies]}, indent=2))


def extra_info(packages: Sequence[str]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


# -- a whole run ---------------------------------------------------------------------------------


@dataclass
class Spec:
    """What a bench measures; see the module's docstring for the cases."""

    unit: str  # "calls" or "sentences": what a row is
    folders: dict[str, Path]  # "unbatched" / "batched" -> a model folder (distinct names)
    factory: str  # module:function, (i, rows) -> InferenceRequest
    in_process: Callable[[int], object]  # one call of `rows` rows
    processes: list[int]
    max_batch_size: int
    rounds: int
    seconds: float
    warmup: float
    in_flight_unbatched: Callable[[int], int]  # by processes
    in_flight_batched: int
    caller_rows: int = 0  # > 0: the caller-batched case too
    caller_in_flight: int = 16
    clients: int = 1
    start_timeout: float = 300.0
    # Other systems' cases, run in the same turns: (tally, one round of it).
    peers: list[tuple[Tally, Callable[[], None]]] = field(default_factory=list)


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _model_name(folder: Path) -> str:
    name: str = json.loads((folder / "model-settings.json").read_text())["name"]
    return name


def measure(spec: Spec, url: str) -> tuple[Tally, Tally, list[Tally]]:
    """Every case of ``spec``, in turns, ``spec.rounds`` times."""
    b = spec.max_batch_size
    one = Tally("in process, batch 1, one call at a time")
    best = Tally(f"in process, batch {b}, one call at a time", rows_per_call=b)
    names = {kind: _model_name(folder) for kind, folder in spec.folders.items()}
    # A fleet per size and kind: a worker serving an idle second model ran a blocking model at
    # a third of its speed alone (106 against 315 calls/s here, 2026-12-05), which is not
    # what these cases measure. It holds two batches' worth of a batched model, three jobs of
    # an unbatched one (more with the caller-batched case's calls in flight).
    concurrency = max(2 * b, spec.caller_in_flight, 3) + 3
    fleets: dict[tuple[int, str], Fleet] = {}
    steps: list[tuple[Tally, Callable[[], None]]] = []
    clients = Clients(spec.clients)
    try:
        for p in spec.processes:
            for kind, folder in spec.folders.items():
                prefix = f"bench-serving-{p}p-{kind}"
                fleets[p, kind] = Fleet.start(url, prefix, [folder], p, concurrency)
        for fleet in fleets.values():
            fleet.wait_started(spec.start_timeout)
        steps.append((one, lambda: in_process_round(spec.in_process, 1, spec.seconds, one)))
        steps.append((best, lambda: in_process_round(spec.in_process, b, spec.seconds, best)))
        cases: list[tuple[str, int, str, int, int, int]] = []  # label, processes, kind, rows, ...
        for p in spec.processes:
            n = spec.in_flight_unbatched(p)
            cases.append(
                (f"fleet, {_processes(p)}, unbatched, {n} in flight", p, "unbatched", 1, n, 1)
            )
            n = spec.in_flight_batched
            cases.append(
                (
                    f"fleet, {_processes(p)}, adaptive batching ({b}), {n} in flight",
                    p,
                    "batched",
                    1,
                    n,
                    b,
                )
            )
            if spec.caller_rows:
                r, n = spec.caller_rows, spec.caller_in_flight
                cases.append(
                    (
                        f"fleet, {_processes(p)}, {r} a call (caller batches), {n} in flight",
                        p,
                        "unbatched",
                        r,
                        n,
                        1,
                    )
                )
        for index, (label, p, kind, rows, n, mbs) in enumerate(cases):
            tally = Tally(label, rows_per_call=rows, in_flight=n, processes=p, max_batch_size=mbs)
            load = Load(
                url,
                f"bench-serving-{p}p-{kind}",
                names[kind],
                spec.factory,
                rows,
                n,
                0,
                0,
                offset=index * 1_000_000_000,
            )

            def step(
                fleet: Fleet = fleets[p, kind], load: Load = load, tally: Tally = tally
            ) -> None:
                anyio.run(fleet_round, fleet, clients, load, spec.warmup, spec.seconds, tally)

            steps.append((tally, step))
        steps += spec.peers
        for index in range(spec.rounds):
            turn = index % len(steps)
            for _, step in steps[turn:] + steps[:turn]:
                step()
            figures = ", ".join(f"{t.rates[-1]:,.0f}" for t, _ in steps)
            print(f"round {index + 1}/{spec.rounds} ({spec.unit}/s): {figures}", file=sys.stderr)
    finally:
        clients.close()
        for (p, kind), fleet in fleets.items():
            fleet.stop()
            _print_call_places(f"{p}p-{kind}", fleet)
    return one, best, [t for t, _ in steps[2:]]


def _print_call_places(name: str, fleet: Fleet) -> None:
    """Where each worker ran a plain ``def`` model's calls (worker.inline_calls): the loop or
    threads, as its log lines said."""
    for worker in fleet.workers:
        moves = [line.split(" ", 1)[-1] for line in worker.lines if "model.calls_" in line]
        for move in moves:
            print(f"{name} {worker.name}: {move}", file=sys.stderr)
