"""What one pipeline round trip costs the process that sends it: redis-py's ``Pipeline.execute``
against :func:`conveyor.broker.fastpipe.execute`, alternated, on a private Redis.

Run from the repository root::

    python -m bench.pipeline [--runs 15] [--trips 2000]

Each run sends ``--trips`` pipelines of an answer's two commands (LPUSH of 100 bytes, EXPIRE)
one after the other through a client made as the broker makes its own (``create_client``: the
fast paths on), and times the process's CPU (user + system) a round trip. The runs of the two
executors alternate, so a host whose speed drifts drifts for both; the medians are printed,
and their ratio. A round trip's CPU is mostly the kernel's and the event loop's (a send, an
epoll wake-up, a receive): what the shortcut takes off is redis-py's Python around them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio.client import Pipeline

from bench.harness import machine
from conveyor.broker import RedisSettings, create_client, fastpipe
from conveyor.embedded import RedisServer

Executor = Callable[[Pipeline], Awaitable[list[Any]]]

EXECUTORS: dict[str, Executor] = {
    "redis-py Pipeline.execute": lambda pipe: pipe.execute(raise_on_error=False),
    "fastpipe.execute": lambda pipe: fastpipe.execute(pipe, raise_on_error=False),
}


async def cpu_per_trip(url: str, execute: Executor, trips: int) -> float:
    """CPU seconds of this process a round trip, after a warm-up."""
    client = create_client(RedisSettings.from_url(url))
    try:
        for i in range(trips + 200):
            if i == 200:
                start = time.process_time()
            pipe = client.pipeline(transaction=False)
            pipe.lpush("bench:bell", b"x" * 100)
            pipe.expire("bench:bell", 60)
            await execute(pipe)
        return (time.process_time() - start) / trips
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=15, help="runs of each executor")
    parser.add_argument("--trips", type=int, default=2000, help="round trips a run")
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    with RedisServer() as server:
        with SyncRedis.from_url(server.url) as probe:
            info = machine(str(probe.info("server")["redis_version"]))
        for _ in range(args.runs):
            for name, execute in EXECUTORS.items():
                figures[name].append(asyncio.run(cpu_per_trip(server.url, execute, args.trips)))
    medians = {name: statistics.median(runs) for name, runs in figures.items()}
    print("| executor | CPU a round trip, median (us) | runs: min-max |")
    print("|---|---:|---:|")
    for name, runs in figures.items():
        low, high = min(runs) * 1e6, max(runs) * 1e6
        print(f"| {name} | {medians[name] * 1e6:.1f} | {low:.1f}-{high:.1f} |")
    base, fast = medians.values()
    print(f"\nfastpipe / redis-py: {fast / base:.2f}x")
    for key, value in info.items():
        print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
