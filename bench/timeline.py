"""Where a sequential call's time goes: ``python -m bench.timeline [--calls N] [--rounds R]``.

One call in flight, the floor (``bench/floor.py``) and Conveyor (``bench-echo``) in turns, each
against a private Redis. The client (this process) and the worker (a child, started through
:func:`traced_worker`) note the time of every socket write and every read that Redis answered,
with whether it carried the job's stream name (the job going out, or coming in) or the reply's
key (the answer). On Linux both clocks are ``CLOCK_MONOTONIC``, so the two processes' events
lie on one time line, and each call splits into four segments:

- **to the worker**: the client's write of the job to the worker's read of it (Redis stores
  the job, answers the blocked read, the kernel wakes the worker);
- **worker**: the worker's read of the job to its write of the answer (its critical path:
  what the worker does before the answer leaves; acks, metrics and the next read come after);
- **to the client**: the worker's write to the client's read of the answer;
- **client**: the client's read of the answer to its write of the next job (the answer's
  decoding, the caller's return, the next request's encoding and send).

The median of each, and Conveyor's against the floor's, show which side a sequential call's
extra time is spent on. The hops through Redis are the host's (the same for both); the sides are
what Conveyor can change.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness

SEGMENTS = ("to the worker", "worker", "to the client", "client")
_WRITE, _READ = "W", "R"


# -- the events, in each process -----------------------------------------------------------------


class Recorder:
    """Notes socket writes and reads of one process: (ns, W or R, job seen, answer seen)."""

    def __init__(self, job_marker: bytes, answer_marker: bytes) -> None:
        self.job = job_marker
        self.answer = answer_marker
        self.events: list[tuple[int, str, bool, bool]] = []

    def note(self, kind: str, data: Any) -> None:
        chunk = bytes(data) if not isinstance(data, bytes) else data
        self.events.append((time.perf_counter_ns(), kind, self.job in chunk, self.answer in chunk))

    def save(self, path: str) -> None:
        with open(path, "w") as out:
            for ns, kind, job, answer in self.events:
                out.write(f"{ns} {kind} {int(job)} {int(answer)}\n")


_recording: list[Recorder] = []  # the recorder the wrapped calls note to (at most one)


def record(recorder: Recorder) -> None:
    """Notes this process's socket writes and stream reads to ``recorder`` from now on.

    Wraps asyncio's socket transport writes and stream reads (redis-py's asyncio connections
    use both) the first time."""
    if not _recording:
        _wrap()
    _recording[:] = [recorder]


def _wrap() -> None:
    from asyncio import selector_events, streams

    transport = selector_events._SelectorSocketTransport
    protocol = streams.StreamReaderProtocol
    write, received = transport.write, protocol.data_received

    def noted_write(self: Any, data: Any) -> None:
        _recording[0].note(_WRITE, data)
        write(self, data)

    def noted_received(self: Any, data: bytes) -> None:
        _recording[0].note(_READ, data)
        received(self, data)

    transport.write = noted_write  # type: ignore[method-assign]
    protocol.data_received = noted_received  # type: ignore[method-assign]
    if "writelines" in vars(transport):  # Python 3.12+ sends a list without write()
        writelines = transport.writelines

        def noted_writelines(self: Any, chunks: Any) -> None:
            _recording[0].note(_WRITE, b"".join(chunks))
            writelines(self, chunks)

        transport.writelines = noted_writelines  # type: ignore[method-assign]


def load_events(path: Path) -> list[tuple[int, str, bool, bool]]:
    events = []
    for line in path.read_text().splitlines():
        ns, kind, job, answer = line.split()
        events.append((int(ns), kind, job == "1", answer == "1"))
    return events


def traced_worker(out: str, job_marker: str, answer_marker: str, argv: list[str]) -> None:
    """The worker's side: notes its events, writes them to ``out`` when it exits, and runs
    the floor's worker (``argv`` = ["floor", URL]) or ``conveyor`` with ``argv``."""
    recorder = Recorder(job_marker.encode(), answer_marker.encode())
    record(recorder)
    atexit.register(recorder.save, out)
    if argv[0] == "floor":
        import signal

        from bench.floor import serve

        def stop(*_: object) -> None:
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        asyncio.run(serve(argv[1]))
        return
    from conveyor.cli.app import main

    sys.argv = ["conveyor", *argv]
    main()


# -- the calls -----------------------------------------------------------------------------------


@dataclass
class Timeline:
    system: str
    p50_ms: float
    segments: dict[str, float]  # median us of each
    calls: int  # calls whose four segments were all found


def segments(
    client: list[tuple[int, str, bool, bool]], worker: list[tuple[int, str, bool, bool]]
) -> dict[str, list[float]]:
    """Each call's four segments (us), from the two processes' events on one clock."""
    merged = sorted([(*e, "client") for e in client] + [(*e, "worker") for e in worker])
    steps = (  # (side, kind, what it carries) of each event of a call, in order
        ("client", _WRITE, "job"),
        ("worker", _READ, "job"),
        ("worker", _WRITE, "answer"),
        ("client", _READ, "answer"),
    )
    found: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    times: list[int] = []
    step = 0
    for ns, kind, job, answer, side in merged:
        want_side, want_kind, carries = steps[step]
        if side != want_side or kind != want_kind or not (job if carries == "job" else answer):
            continue
        times.append(ns)
        step = (step + 1) % len(steps)
        if step == 1 and len(times) == 5:  # the next call's job went: the last call is whole
            for name, start, end in zip(SEGMENTS, times, times[1:], strict=False):
                found[name].append((end - start) / 1e3)
            times = times[4:]
    return found


async def _calls(call: harness.Call, count: int, recorder: Recorder) -> float:
    for _ in range(300):  # warm-up: not on the time line
        await call()
    recorder.events.clear()
    result = await harness.sequential("timeline", call, count, harness.Meter({}))
    assert result.p50_ms is not None
    return result.p50_ms


def run(system: str, count: int) -> Timeline:
    from conveyor.broker.keys import Keys
    from conveyor.embedded import RedisServer

    if system == "floor":
        from bench.floor import JOBS

        job_marker, answer_marker = JOBS, "floor:reply:"
    else:
        job_marker, answer_marker = Keys("bench1").jobs("bench-echo"), "bench1:bell:"
    recorder = Recorder(job_marker.encode(), answer_marker.encode())
    out = Path(f"/tmp/conveyor-timeline-{os.getpid()}-{system}.txt")
    with RedisServer() as server:
        head = [sys.executable, "-m", "bench.timeline", "--traced", str(out)]
        head += ["--markers", job_marker, answer_marker, "--"]
        if system == "floor":
            worker = harness.Process("floor", [*head, "floor", server.url])
        else:
            folder = str(harness.MODELS / "bench-echo")
            argv = ["worker", folder, "--redis", server.url, "--prefix", "bench1"]
            argv += ["--name", "timeline-w1", "--log-level", "info"]
            worker = harness.Process("conveyor", [*head, *argv])
            worker.wait_for_log("worker.started")
        try:
            record(recorder)
            p50 = asyncio.run(_measure(system, server.url, recorder, count))
        finally:
            worker.stop()
    found = segments(recorder.events, load_events(out))
    out.unlink()
    return Timeline(
        system,
        p50,
        {name: statistics.median(values) for name, values in found.items()},
        len(found["client"]),
    )


async def _measure(system: str, url: str, recorder: Recorder, count: int) -> float:
    if system == "floor":
        from bench.floor import FloorClient

        payload = np.random.bytes(100)
        async with FloorClient(url) as floor:
            return await _calls(lambda: floor.call(payload), count, recorder)
    from bench.run import _small_request
    from conveyor.client import Client

    request = _small_request()
    async with Client(url, prefix="bench1") as client:
        model = client.model("bench-echo")
        return await _calls(lambda: model.predict(request), count, recorder)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--traced", help=argparse.SUPPRESS)  # the worker's side
    parser.add_argument("--markers", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.traced:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        traced_worker(args.traced, args.markers[0], args.markers[1], rest)
        return
    for key, value in harness.machine("private redis-server").items():
        print(f"- {key}: {value}")
    results: dict[str, list[Timeline]] = {"floor": [], "conveyor": []}
    for round_number in range(args.rounds):
        for system in results if round_number % 2 == 0 else reversed(list(results)):
            timeline = run(system, args.calls)
            results[system].append(timeline)
            parts = ", ".join(f"{name} {us:.0f}" for name, us in timeline.segments.items())
            print(
                f"{system}: p50 {timeline.p50_ms:.3f} ms; {timeline.calls} calls on the time "
                f"line; us: {parts}",
                flush=True,
            )
    _print_table(results)


def _print_table(results: dict[str, list[Timeline]]) -> None:
    def median(system: str, pick: Callable[[Timeline], float]) -> float:
        return statistics.median(pick(t) for t in results[system])

    print()
    print("| segment (median us) | floor | Conveyor | Conveyor - floor |")
    print("|---|---:|---:|---:|")
    for name in SEGMENTS:
        floor = median("floor", lambda t, n=name: t.segments[n])  # type: ignore[misc]
        conveyor = median("conveyor", lambda t, n=name: t.segments[n])  # type: ignore[misc]
        print(f"| {name} | {floor:.0f} | {conveyor:.0f} | {conveyor - floor:+.0f} |")
    floor_sum = sum(median("floor", lambda t, n=n: t.segments[n]) for n in SEGMENTS)  # type: ignore[misc]
    conveyor_sum = sum(median("conveyor", lambda t, n=n: t.segments[n]) for n in SEGMENTS)  # type: ignore[misc]
    print(f"| the four | {floor_sum:.0f} | {conveyor_sum:.0f} | {conveyor_sum - floor_sum:+.0f} |")
    floor_p50 = median("floor", lambda t: t.p50_ms) * 1e3
    conveyor_p50 = median("conveyor", lambda t: t.p50_ms) * 1e3
    print(
        f"| call p50 (the caller's) | {floor_p50:.0f} | {conveyor_p50:.0f} | "
        f"{conveyor_p50 - floor_p50:+.0f} ({conveyor_p50 / floor_p50:.2f}x) |"
    )


if __name__ == "__main__":
    main()
