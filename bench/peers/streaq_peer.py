"""streaQ: a ``Worker`` with one task, as its README shows.

Runs inside streaQ's own venv. ``task = await noop.enqueue()`` enqueues, ``await task.result()``
awaits the result (streaQ subscribes to the task's channel: one pooled connection per waiting
caller), ``worker.enqueue_many`` enqueues in bulk (its documented pipeline).

The caller's pool: coredis's default of 64 connections hangs with 64 results awaited at once
(each waiter holds a connection for its subscription, and the enqueues need more), so the
driver's ``Worker`` gets ``max_connections`` of 2 x in flight + 16. The worker process keeps
the default.

The worker runs ``worker.run_sync()`` (what ``streaq run module:worker`` does) from this
module, with logging at WARNING: the CLI always logs at INFO, two lines per task, and Conveyor's
worker is measured at ``--log-level warning`` too.

Worker: ``python -m bench.peers.streaq_peer worker`` (``$BENCH_REDIS_URL``,
``$BENCH_CONCURRENCY``). Driver: ``python -m bench.peers.streaq_peer drain|rpc ...``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from streaq import Worker

from bench.peers import _driver

QUEUE = "bench-streaq"
ENQUEUE_AT_ONCE = 1000


def make_worker(url: str, concurrency: int, max_connections: int | None) -> tuple[Worker, Any]:
    kwargs = {} if max_connections is None else {"max_connections": max_connections}
    worker = Worker(redis_url=url, queue_name=QUEUE, concurrency=concurrency, redis_kwargs=kwargs)

    @worker.task(name="bench_noop")
    async def noop() -> None:
        return None

    return worker, noop


class StreaqPeer:
    def __init__(self, opts: _driver.Options) -> None:
        self.opts = opts
        self.worker, self.noop = make_worker(
            opts.url, opts.concurrency, max_connections=2 * opts.in_flight + 16
        )

    async def __aenter__(self) -> StreaqPeer:
        await self.worker.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.worker.__aexit__(*exc)

    def worker_argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.peers.streaq_peer", "worker"]

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_REDIS_URL": self.opts.url, "BENCH_CONCURRENCY": str(self.opts.concurrency)}

    async def enqueue(self, count: int) -> None:
        for start in range(0, count, ENQUEUE_AT_ONCE):
            n = min(ENQUEUE_AT_ONCE, count - start)
            await self.worker.enqueue_many([self.noop.enqueue() for _ in range(n)])

    async def backlog(self) -> int:
        # finished tasks are XACKed and XDELed: the stream's length is the backlog
        return int(await self.worker.queue_size())

    async def call(self) -> None:
        task = await self.noop.enqueue()
        result = await task.result(timeout=60)
        if not result.success:
            raise RuntimeError(f"task failed: {result.exception!r}")


def serve() -> None:
    logging.basicConfig(level=logging.WARNING)
    concurrency = int(os.environ["BENCH_CONCURRENCY"])
    worker, _ = make_worker(os.environ["BENCH_REDIS_URL"], concurrency, max_connections=None)
    worker.run_sync()


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        serve()
    else:
        _driver.main(StreaqPeer, ("streaq", "coredis"))
