"""Worker CPU per job draining a backlog: ``python -m bench.drain [--jobs N] [--rounds R]``.

For each round, in turns: N echo jobs are XADDed to a private Redis first, then one worker
process starts (the floor's, ``bench/floor.py``; the typed floor, ``bench/typed_floor.py``,
the floor's loop doing a Conveyor job's V2 decode, model call and encode; or ``conveyor
worker`` serving ``bench-echo``, 64 slots) and drains them; its CPU (``/proc``) from its start
line to an empty stream, per job. No client competes for the CPUs while it runs, and every
read takes 64 jobs, so the figure is the worker's own cost per job, steadier on a shared
machine than the 64-in-flight cases. Conveyor less the typed floor is what the worker's own
machinery costs (admission, deadlines, claims, metrics, a task a job, acks after answers).
A tree installed apart can be measured against this one by putting it first on
``PYTHONPATH`` (the worker process inherits it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import msgpack
import numpy as np
from redis import Redis

from bench import harness
from bench.run import _small_request
from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, encode_job
from conveyor.embedded import RedisServer


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_floor(redis: Redis, jobs: int) -> str:
    stream, payload = "floor:jobs", np.random.bytes(100)
    pipe = redis.pipeline(transaction=False)
    for i in range(jobs):
        job = msgpack.packb({"id": uuid.uuid4().hex, "reply": "floor:reply:drain"})
        pipe.xadd(stream, {"job": job, "p": payload})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return stream


def _load_conveyor(redis: Redis, jobs: int) -> str:
    keys, client = Keys("bench1"), uuid.uuid4().hex[:16]
    stream, request, now = keys.jobs("bench-echo"), _small_request(), time.time()
    pipe = redis.pipeline(transaction=False)
    for i in range(jobs):
        request_id = f"{client}-{i}"
        job = Job(
            id=request_id,
            method="predict",
            model="bench-echo",
            version=None,
            reply=keys.reply(client, request_id),
            bell=keys.bell(client),
            deadline=now + 600,
            sent_at=now,
            args=(request,),
            kwargs={},
            inline_reply=True,
        )
        pipe.xadd(stream, encode_job(job))  # type: ignore[arg-type]
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return stream


def drain(kind: str, jobs: int) -> tuple[float, float]:
    """(jobs/s, worker CPU us per job) of one drain."""
    with RedisServer() as server, Redis.from_url(server.url) as redis:
        if kind == "floor":
            stream = _load_floor(redis, jobs)
            worker = harness.floor_worker(server.url)
            while redis.xlen(stream) == jobs:  # the floor logs no start line: its first read
                time.sleep(0.001)
            done = redis.xlen(stream)
        else:
            stream = _load_conveyor(redis, jobs)
            if kind == "typed":
                folder = str(harness.MODELS / "bench-echo")
                argv = [sys.executable, "-m", "bench.typed_floor", server.url, "bench1", folder]
                worker = harness.Process("typed-floor", argv)
            else:
                worker = harness.conveyor_worker(server.url, "bench1", "drain-w1", ("bench-echo",))
            worker.wait_for_log("worker.started")
            done = jobs
        try:
            cpu, start = _cpu(worker.pid), time.perf_counter()
            while redis.xlen(stream) > 0:
                time.sleep(0.02)
            used, took = _cpu(worker.pid) - cpu, time.perf_counter() - start
        finally:
            worker.stop()
    return done / took, used / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"floor": [], "typed": [], "conveyor": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(drain(kind, args.jobs))
            rate, cpu = results[kind][-1]
            print(f"{kind}: {rate:,.0f} jobs/s, worker {cpu:.1f} us/job", flush=True)
    for kind, found in results.items():
        cpus, rate = [cpu for _, cpu in found], statistics.median(r for r, _ in found)
        print(
            f"{kind}: median {statistics.median(cpus):.1f} us/job "
            f"({min(cpus):.1f}-{max(cpus):.1f}), {rate:,.0f} jobs/s"
        )


if __name__ == "__main__":
    main()
