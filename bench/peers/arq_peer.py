"""arq: one function, ``ArqRedis.enqueue_job`` and ``Job.result()``, as arq's docs show.

Runs inside arq's own venv. ``await job.result()`` polls every 0.5 s (the default), and the
worker polls its queue every 0.5 s (``poll_delay``, default); ``max_jobs`` is the concurrency.

The worker runs ``arq.run_worker(settings)`` (the documented way to run a worker from Python,
what the ``arq`` command does) with logging at WARNING: the command logs two lines per job at
INFO, and Conveyor's worker is measured at ``--log-level warning`` too.

Worker: ``python -m bench.peers.arq_peer worker`` (``$BENCH_REDIS_URL``,
``$BENCH_CONCURRENCY``). Driver: ``python -m bench.peers.arq_peer drain|rpc ...``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from arq import ArqRedis, create_pool, run_worker
from arq.connections import RedisSettings

from bench.peers import _driver

QUEUE = "bench-arq"
TASK = "bench_noop"
ENQUEUE_AT_ONCE = 64


async def bench_noop(ctx: dict[str, Any]) -> None:
    return None


class ArqPeer:
    def __init__(self, opts: _driver.Options) -> None:
        self.opts = opts
        self.settings = RedisSettings.from_dsn(opts.url)
        self.redis: ArqRedis | None = None

    async def __aenter__(self) -> ArqPeer:
        self.redis = await create_pool(self.settings, default_queue_name=QUEUE)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    @property
    def pool(self) -> ArqRedis:
        assert self.redis is not None
        return self.redis

    def worker_argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.peers.arq_peer", "worker"]

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_REDIS_URL": self.opts.url, "BENCH_CONCURRENCY": str(self.opts.concurrency)}

    async def enqueue(self, count: int) -> None:
        for start in range(0, count, ENQUEUE_AT_ONCE):
            n = min(ENQUEUE_AT_ONCE, count - start)
            await asyncio.gather(*(self.pool.enqueue_job(TASK) for _ in range(n)))

    async def backlog(self) -> int:
        # a job leaves the queue's sorted set when it finishes
        return int(await self.pool.zcard(QUEUE))

    async def call(self) -> None:
        job = await self.pool.enqueue_job(TASK)
        assert job is not None
        await job.result(timeout=60)  # raises the job's exception if it failed


def serve() -> None:
    logging.basicConfig(level=logging.WARNING)

    class WorkerSettings:
        functions = [bench_noop]
        redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
        queue_name = QUEUE
        max_jobs = int(os.environ["BENCH_CONCURRENCY"])

    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        serve()
    else:
        _driver.main(ArqPeer, ("arq", "redis", "hiredis"))
