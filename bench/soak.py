"""A long run: does anything grow with the calls served? ``python -m bench.soak``.

One worker serves the suite's echo and failing test models (``tests/models/common``); one
client makes calls of every kind, 64 in flight, window after window: predict (15 in 20),
predict_stream of three chunks, a model that raises, a call that times out while the model
still runs, a call its caller cancels, a custom handler. After each window it prints the
worker's and the client's resident memory and what Redis holds: its memory, its keys, and
those without a TTL (the fleet's own: job streams, worker registry; never one per call).
With ``--expire`` it then waits until every call's keys are due to expire (the longest
timeout plus the reply grace) and prints what is left.

    python -m bench.soak [--windows 20] [--calls 4000] [--expire]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import IO

import anyio
import numpy as np
from redis import Redis as SyncRedis

from bench.harness import ROOT, machine
from conveyor.broker.replies import REPLY_GRACE_S
from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError
from conveyor.types import InferenceRequest, Parameters, RequestInput

PREFIX = "soak"
TIMEOUT_S = 10.0  # the client's default: every key of a call is due to expire this + grace
IN_FLIGHT = 64


def _request(value: float, **parameters: object) -> InferenceRequest:
    data = np.asarray([value], dtype=np.float32)
    return InferenceRequest(
        parameters=Parameters(**parameters) if parameters else None,
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)],
    )


async def _three() -> AsyncIterator[InferenceRequest]:
    for value in range(3):
        yield _request(float(value))


async def _call(client: Client, number: int) -> None:
    """The call of kind ``number % 20``: mostly predicts, one in 20 of each other kind."""
    echo, fails = client.model("echo"), client.model("fails")
    kind = number % 20
    if kind < 15:
        await echo.predict(_request(float(number)))
    elif kind == 15:
        async for _chunk in echo.predict_stream(_three()):
            pass
    elif kind == 16:
        await fails.predict(_request(1.0))  # RemoteError
    elif kind == 17:
        await echo.predict(_request(1.0, sleep=0.3), timeout=0.05)  # DeadlineExceeded
    elif kind == 18:
        with anyio.move_on_after(0.01):  # the caller gives up: the worker is told to stop
            await echo.predict(_request(1.0, sleep=0.2))
    else:
        await echo.call("add", 2, b=3)


async def _window(client: Client, calls: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    room = anyio.Semaphore(IN_FLIGHT)

    async def one(number: int) -> None:
        async with room:
            try:
                await _call(client, number)
                outcomes["ok"] += 1
            except ConveyorError as error:  # the failing model's, the timed-out call's
                outcomes[type(error).__name__] += 1

    async with anyio.create_task_group() as group:
        for number in range(calls):
            group.start_soon(one, number)
    return outcomes


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _redis_state(redis: SyncRedis) -> str:
    names = [key.decode() for key in redis.scan_iter(f"{PREFIX}:*", count=1000)]
    kinds = Counter(name.split(":")[1] for name in names)
    pipe = redis.pipeline(transaction=False)  # one round trip for every key's TTL
    for name in names:
        pipe.ttl(name)
    lasting = [name for name, ttl in zip(names, pipe.execute(), strict=True) if ttl == -1]
    memory = redis.info("memory")["used_memory"]
    return (
        f"redis {memory / 2**20:.1f} MiB, keys {dict(sorted(kinds.items()))}, "
        f"without TTL {len(lasting)}: {' '.join(sorted(lasting))}"
    )


def _start_worker(url: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """The worker, its log to a file: kept in this process, its lines would be growth here."""
    folders = [str(ROOT / "tests/models/common" / model) for model in ("echo", "fails")]
    argv = [sys.executable, "-m", "conveyor.cli", "worker", *folders, "--redis", url]
    argv += ["--prefix", PREFIX, "--name", "soak-worker", "--log-level", "warning"]
    return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


async def _soak(url: str, windows: int, calls: int, expire: bool) -> None:
    redis = SyncRedis.from_url(url)
    with tempfile.TemporaryFile() as log:
        worker = _start_worker(url, log)
        try:
            async with Client(url, prefix=PREFIX, timeout=TIMEOUT_S) as client:
                await client.model("echo").predict(_request(0.0))  # served once it is up
                for window in range(1, windows + 1):
                    began = time.perf_counter()
                    outcomes = await _window(client, calls)
                    took = time.perf_counter() - began
                    gc.collect()
                    line = (
                        f"window {window:>3} ({window * calls:,} calls) "
                        f"{calls / took:,.0f} calls/s, worker {_rss_kib(worker.pid) / 1024:.1f} "
                        f"MiB, client {_rss_kib(os.getpid()) / 1024:.1f} MiB, {dict(outcomes)}"
                    )
                    if window in (1, windows) or window % 10 == 0:
                        line += "; " + _redis_state(redis)
                    print(line, flush=True)
            if expire:
                wait = TIMEOUT_S + REPLY_GRACE_S + 2
                print(f"waiting {wait:.0f} s: every call's keys are then due to expire", flush=True)
                await anyio.sleep(wait)
                print("after: " + _redis_state(redis), flush=True)
        finally:
            redis.close()
            worker.terminate()
            worker.wait(30)
        log.seek(0)
        print(f"the worker logged {len(log.read().splitlines()):,} lines (warnings and errors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--calls", type=int, default=4000, help="calls per window")
    parser.add_argument("--expire", action="store_true", help="then wait out the keys' TTLs")
    args = parser.parse_args()
    with RedisServer() as server:
        with SyncRedis.from_url(server.url) as redis:
            version = str(redis.info("server")["redis_version"])
        for name, value in machine(version).items():
            print(f"{name}: {value}")
        anyio.run(_soak, server.url, args.windows, args.calls, args.expire)


if __name__ == "__main__":
    main()
