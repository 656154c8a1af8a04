"""The batch path's cost per request (issue 14, item 3): ``python -m bench.batchpath``.

One ``conveyor worker`` process serves ``bench-echo`` (a copy of its folder with
``max_batch_size`` 256): the batcher merges the single-row requests, the model echoes the merged
inputs, the batcher splits them back. This process keeps ``--in-flight`` (1,024) single-item
calls in flight, each a float32 ``[1, --width]`` tensor (or, with ``--text``, one sentence: a
BYTES ``[1, 1]`` input, as a text model's callers send), and meanwhile reads the worker's CPU
(/proc) and its ``conveyor_worker_batch_size`` histogram (the mean batch). Beside it, the same
model is called here, in process, on a request of 256 rows merged beforehand: the model's own
CPU per request. So

    overhead per request = worker CPU per request - model CPU per request

which the issue wants at most 30 us in a batch of 256. ``--rounds`` repeats the load (the
median is reported with the range), and ``--profile S`` records the worker with py-spy for S
seconds under the same load and prints where its time goes (``bench.profile.summarise``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import numpy as np
from redis import Redis as SyncRedis
from rich.console import Console
from rich.table import Table

from bench import harness
from bench import profile as profiling
from bench.harness import Meter, Process, load
from bench.sentences import sentences
from conveyor.batching import merge_requests, split_response, split_rows
from conveyor.broker import RedisSettings, create_client
from conveyor.broker.claims import SoonClaims
from conveyor.broker.pipelining import PipelineBatcher
from conveyor.broker.wire import (
    Job,
    JobDecoder,
    Message,
    MessageType,
    RowsEncoder,
    decode_job,
    encode_job,
    encode_message,
    encode_rows,
)
from conveyor.client import Client
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.embedded import RedisServer
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker.batcher import _batch_key

MODEL = "bench-echo"
PREFIX = "bench-bp"
BATCH = 256


@dataclass(frozen=True)
class Requests:
    """What each call sends: a float32 ``[1, width]`` row, or (``text``) one sentence, a
    BYTES ``[1, 1]`` input, as a text model's callers send (``bench.sentences``)."""

    width: int
    text: bool = False

    def make(self, value: float) -> InferenceRequest:
        if self.text:
            sentence = f"{value:g} {sentences(1, seed=int(value))[0]}"
            return InferenceRequest(inputs=[StringCodec.encode_input("text", [sentence])])
        row = np.full((1, self.width), value, dtype=np.float32)
        return InferenceRequest(inputs=[NumpyCodec.encode_input("x", row)])

    def check(self, response: InferenceResponse, request: InferenceRequest) -> None:
        """Raises unless ``response`` echoes ``request``'s input."""
        got = NumpyCodec.decode_output(response.outputs[0])
        sent = NumpyCodec.decode_input(request.inputs[0])
        if got.shape != sent.shape or not np.array_equal(got, sent):
            raise RuntimeError(f"bad answer: {got!r}")


def model_cpu_per_request(models_dir: Path, requests: Requests, seconds: float = 1.0) -> float:
    """The model's own CPU per request (us): ``predict`` on 256 rows merged beforehand."""
    settings = load_model_settings(models_dir / MODEL)
    model = settings.implementation(settings)
    merged = merge_requests([requests.make(float(i)) for i in range(BATCH)])

    async def run() -> float:
        await model.load()
        calls = 0
        start = time.process_time()
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            await model.predict(merged)
            calls += 1
        return (time.process_time() - start) / (calls * BATCH) * 1e6

    return anyio.run(run)


def pieces(models_dir: Path, requests: Requests, rounds: int = 20) -> dict[str, float]:
    """Each step a batch of 256 takes in the worker, timed here in process (CPU us per
    request, best of ``rounds``): what a batch path costs without Redis, tasks or the loop."""
    settings = load_model_settings(models_dir / MODEL)
    model = settings.implementation(settings)
    anyio.run(model.load)
    now = time.time()
    entries = []
    for i in range(BATCH):
        job = Job(
            id=f"req-{i}",
            method="predict",
            model=MODEL,
            version=None,
            reply=f"p:reply:{{c}}:req-{i}",
            bell="p:bell:{c}",
            deadline=now + 60,
            sent_at=now,
            args=(requests.make(float(i)),),
            inline_reply=True,
        )
        entries.append(_as_redis(encode_job(job)))
    jobs = [decode_job(fields) for fields in entries]
    requests = [cast(InferenceRequest, job.args[0]) for job in jobs]
    merged = merge_requests(requests)
    laid = [job.args[0] for job in _decoded(entries, lazy=True)]
    response = anyio.run(model.predict, merged)
    answers = split_response(response, requests)
    messages = [
        Message(MessageType.RESULT, job.id, 1, payload=answer, entry="1-0")
        for job, answer in zip(jobs, answers, strict=True)
    ]
    steps: dict[str, Callable[[], object]] = {
        "decode: decode_job each (msgpack + validated InferenceRequest)": lambda: [
            decode_job(fields) for fields in entries
        ],
        "decode: a read's jobs together, each request built (JobDecoder)": lambda: _decoded(
            entries, lazy=False
        ),
        "decode: a read's jobs together, requests as the wire's bytes (LaidRequest)": lambda: (
            _decoded(entries, lazy=True)
        ),
        "batch key each (the worker: once a layout)": lambda: [
            _batch_key(request) for request in requests
        ],
        "merge_requests, each request built": lambda: merge_requests(requests),
        "merge_requests (from the wire's bytes)": lambda: merge_requests(laid),
        "the model (predict on 256 rows)": lambda: _run_now(model.predict(merged)),
        "answers: split_response each": lambda: split_response(response, requests),
        "answers: encode_message each": lambda: [encode_message(m) for m in messages],
        "answers: split_rows + encode_rows each": lambda: [
            encode_rows(job.id, 1, "1-0", rows, job.id)
            for job, rows in zip(jobs, split_rows(response, requests), strict=True)
        ],
        "answers: split_rows + RowsEncoder (spliced)": lambda: _spliced(jobs, response, requests),
    }
    figures = {}
    for name, step in steps.items():
        best = math.inf
        for _ in range(rounds):
            start = time.process_time()
            step()
            best = min(best, time.process_time() - start)
        figures[name] = best / BATCH * 1e6
    return figures


def claim_steps(url: str, rounds: int = 20) -> dict[str, float]:
    """A batch's claims (``broker.claims.SoonClaims``) against the private Redis, this
    process's CPU per request (best of ``rounds`` batches of 256), both ways a worker sends
    them: one script for a client's claims, and a SET each (Redis Cluster, or an ACL without
    the script)."""

    async def run(scripted: bool) -> float:
        redis = create_client(RedisSettings.from_url(url))
        batcher = PipelineBatcher(redis)
        claims = SoonClaims(batcher, scripted=scripted)
        now = time.time()
        jobs = [
            Job(f"req-{i}", "predict", MODEL, None, "r", "b", now + 60, now) for i in range(BATCH)
        ]
        best = math.inf
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(batcher.run_flusher)
                for index in range(rounds):
                    done = anyio.Event()
                    claimed = _counter(BATCH, done.set)
                    start = time.process_time()
                    for job in jobs:
                        key = f"{PREFIX}:claim:{{bench}}:{index}:{job.id}"
                        claims.claim_soon(key, job, b"1-1", 60.0, claimed)
                    await done.wait()
                    best = min(best, time.process_time() - start)
                tg.cancel_scope.cancel()
        finally:
            await redis.aclose()
        return best / BATCH * 1e6

    return {
        "claims: one script a client's (Redis)": anyio.run(run, True),
        "claims: a SET each (Redis Cluster)": anyio.run(run, False),
    }


def _alternative(step: str) -> bool:
    """A step the worker takes another way: not counted in the total."""
    return " each" in step.split("(")[0]


def _decoded(entries: list[dict[bytes, bytes]], *, lazy: bool) -> list[Job]:
    decoder = JobDecoder(lazy=lazy)
    return [decoder.decode(fields) for fields in entries]


def _spliced(jobs: list[Job], response: Any, requests: list[InferenceRequest]) -> list[object]:
    encoder = RowsEncoder()  # one a batch, as the worker's
    return [
        encoder.encode(job.id, 1, "1-0", rows, job.id)
        for job, rows in zip(jobs, split_rows(response, requests), strict=True)
    ]


def _counter(count: int, then: Callable[[], None]) -> Callable[[str | None], None]:
    """A claim's callback that calls ``then`` once ``count`` claims were heard."""
    heard = [0]

    def claimed(holder: str | None) -> None:
        heard[0] += 1
        if heard[0] == count:
            then()

    return claimed


def _run_now(coroutine: Any) -> object:
    """A coroutine that never waits, run without an event loop (anyio.run costs ~0.5 ms)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the model waited: time it with anyio.run")


def _as_redis(fields: Mapping[str, object]) -> dict[bytes, bytes]:
    """An entry's fields as XREADGROUP returns them (bytes)."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        if isinstance(value, str):
            out[key.encode()] = value.encode()
        elif isinstance(value, bytes | memoryview):
            out[key.encode()] = bytes(value)
        else:
            out[key.encode()] = str(value).encode()
    return out


async def _load(
    url: str, worker: Process, in_flight: int, seconds: float, requests: Requests
) -> Any:
    meter = Meter({"client": [os.getpid()], "worker": [worker.pid]}, SyncRedis.from_url(url))
    request = requests.make(1.0)
    async with Client(url, prefix=PREFIX) as client:
        model = client.model(MODEL)

        async def call() -> object:
            response = await model.predict(request, timeout=120)
            requests.check(response, request)
            return response

        await call()
        await load("warm-up", call, in_flight, 1.0, meter)
        before = await anyio.to_thread.run_sync(harness.batch_sizes, [worker])
        result = await load("batchpath", call, in_flight, seconds, meter)
        after = await anyio.to_thread.run_sync(harness.batch_sizes, [worker])
    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    return result, mean_batch


async def _profiled(
    url: str, worker: Process, in_flight: int, seconds: float, requests: Requests, argv: list[str]
) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_load, url, worker, in_flight, seconds + 3, requests)
        await anyio.sleep(1.5)  # after the warm-up
        spy = await anyio.run_process(argv, check=False)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr.decode()[-2000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batchpath",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--in-flight", type=int, default=1024)
    parser.add_argument("--width", type=int, default=25, help="float32 per request (row)")
    parser.add_argument("--text", action="store_true", help="one sentence a request instead")
    parser.add_argument("--seconds", type=float, default=5.0, help="of load per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max-batch-time",
        type=float,
        default=0.05,
        help="seconds (long enough that one client process fills batches of 256)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=BATCH,
        help="the worker's (1: the same load unbatched, for comparison)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1024, help="jobs the worker holds (--concurrency)"
    )
    parser.add_argument("--profile", type=float, metavar="S", help="py-spy the worker S seconds")
    parser.add_argument("--profile-out", type=Path, help="keep py-spy's raw output here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the figures here")
    args = parser.parse_args(argv)
    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="bench-bp-") as tmp, RedisServer() as server:
        models_dir = Path(tmp)
        harness.model_copy(
            models_dir,
            MODEL,
            max_batch_size=args.max_batch_size,
            max_batch_time=args.max_batch_time,
        )
        requests = Requests(args.width, args.text)
        model_us = model_cpu_per_request(models_dir, requests)
        steps = pieces(models_dir, requests)
        steps.update(claim_steps(server.url))
        worker = harness.conveyor_worker(
            server.url,
            PREFIX,
            "bp-w1",
            [MODEL],
            concurrency=args.concurrency,
            models_dir=models_dir,
            metrics=True,
        )
        try:
            worker.wait_for_log("worker.started")
            info = harness.machine("(private)")
            for key in ("date", "commit", "cpus", "cpu model", "python", "load average"):
                console.print(f"[bold]{key}:[/bold] {info[key]}")
            rows = []
            for index in range(args.rounds):
                result, mean_batch = anyio.run(
                    _load, server.url, worker, args.in_flight, args.seconds, requests
                )
                worker_us = result.cpu_us_per_call["worker"]
                rows.append(
                    {
                        "calls_per_s": result.calls_per_s,
                        "worker_us": worker_us,
                        "client_us": result.cpu_us_per_call["client"],
                        "mean_batch": mean_batch,
                        "overhead_us": worker_us - model_us,
                        # a command's cost is mostly its round trip's, shared by its batch
                        "redis_commands": result.commands_per_call,
                    }
                )
                console.print(f"round {index + 1}: {rows[-1]}")
            if args.profile:
                _profile(args, server.url, worker, console)
            noise = harness.log_lines_after_start(worker)
        finally:
            worker.stop()
    _report(rows, model_us, args, console)
    table = Table(title="the batch path's steps in process, CPU per request (best of 20)")
    table.add_column("step")
    table.add_column("us", justify="right")
    for name, us in steps.items():
        table.add_row(name, f"{us:.2f}")
    table.add_row(
        "all of these but those marked 'each' (the worker's ways)",
        f"{sum(us for name, us in steps.items() if not _alternative(name)):.2f}",
    )
    console.print(table)
    if noise:
        console.print(f"[yellow]the worker logged {len(noise)} lines: {noise[:3]}[/yellow]")
    if args.json:
        figures = {
            "machine": info,
            "model_us": model_us,
            "rounds": rows,
            "steps_us": steps,
            "args": vars(args),
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _profile(args: argparse.Namespace, url: str, worker: Process, console: Console) -> None:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    out = args.profile_out or Path(tempfile.mkdtemp(prefix="bench-bp-profile-")) / "worker.txt"
    spy = [py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--full-filenames"]
    spy += ["--rate", str(profiling.RATE), "--duration", str(round(args.profile))]
    spy += ["--subprocesses", "--output", str(out)]
    console.print(f"profiling the worker: {' '.join(spy)}")
    requests = Requests(args.width, args.text)
    anyio.run(_profiled, url, worker, args.in_flight, args.profile, requests, spy)
    summary = profiling.summarise(out, worker.pid, top=30)
    console.print(f"{summary['samples']} samples of the worker's main thread; raw: {out}")
    for key in ("phases", "topics", "self_lines", "inclusive_conveyor", "self_libraries"):
        table = Table(title=f"worker: {key} (% of samples)")
        table.add_column(key)
        table.add_column("%", justify="right")
        for name, share in summary[key]:
            table.add_row(name, f"{share:.1f}")
        console.print(table)


def _report(rows: list[dict[str, float]], model_us: float, args: Any, console: Console) -> None:
    title = f"batch path: max_batch_size {args.max_batch_size}, {args.in_flight} in flight"
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("median", justify="right")
    table.add_column("range", justify="right")
    for key, label in (
        ("worker_us", "worker CPU per request (us)"),
        ("overhead_us", "overhead per request (us) = worker - model"),
        ("mean_batch", "mean batch"),
        ("calls_per_s", "calls/s"),
        ("client_us", "client CPU per request (us)"),
    ):
        values = [row[key] for row in rows]
        table.add_row(
            label, f"{statistics.median(values):,.1f}", f"{min(values):,.1f}-{max(values):,.1f}"
        )
    table.add_row("model CPU per request (us), in process at 256", f"{model_us:.2f}", "")
    console.print(table)
    console.print(f"load average (end): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
