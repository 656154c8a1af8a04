"""taskiq + taskiq-redis's stream broker (``RedisStreamBroker``) with ``RedisAsyncResultBackend``.

Runs inside taskiq's own venv. As the taskiq-redis README shows: a ``RedisStreamBroker`` with
a result backend, ``await task.kiq()`` to enqueue, ``await handle.wait_result()`` (it polls
every 0.2 s, the default) to await a result, and ``taskiq worker module:broker`` to serve.
The task has an explicit name: taskiq acknowledges and drops a job whose task name the worker
does not know, and a task defined in ``__main__`` would otherwise be named after it.

Worker: ``taskiq worker bench.peers.taskiq_peer:broker --workers 1 --max-async-tasks N``, its
Redis URL in ``$BENCH_REDIS_URL``. Driver: ``python -m bench.peers.taskiq_peer drain|rpc ...``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncTaskiqDecoratedTask
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from bench.peers import _driver

QUEUE = "bench-taskiq"  # the stream
GROUP = "taskiq"  # the broker's default consumer group
TASK = "bench_noop"
ENQUEUE_AT_ONCE = 64


NoopTask = AsyncTaskiqDecoratedTask[[], Coroutine[Any, Any, None]]


def make_broker(url: str) -> tuple[RedisStreamBroker, NoopTask]:
    broker = RedisStreamBroker(url=url, queue_name=QUEUE).with_result_backend(
        RedisAsyncResultBackend(redis_url=url)
    )

    @broker.task(task_name=TASK)
    async def noop() -> None:
        return None

    return broker, noop


def __getattr__(name: str) -> Any:
    # ``taskiq worker bench.peers.taskiq_peer:broker`` reads this; built on first use so that
    # the driver, which imports this module too, needs no URL in the environment.
    if name == "broker":
        broker, _ = make_broker(os.environ["BENCH_REDIS_URL"])
        globals()["broker"] = broker
        return broker
    raise AttributeError(name)


class TaskiqPeer:
    def __init__(self, opts: _driver.Options) -> None:
        self.opts = opts
        self.broker, self.noop = make_broker(opts.url)
        self.redis = Redis.from_url(opts.url)

    async def __aenter__(self) -> TaskiqPeer:
        await self.broker.startup()  # creates the consumer group ("$": before any job)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.shutdown()
        await self.redis.aclose()

    def worker_argv(self) -> list[str]:
        taskiq = str(Path(sys.executable).parent / "taskiq")
        return [
            taskiq,
            "worker",
            "bench.peers.taskiq_peer:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(self.opts.concurrency),
            "--log-level",
            "WARNING",
        ]

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_REDIS_URL": self.opts.url}

    async def enqueue(self, count: int) -> None:
        for start in range(0, count, ENQUEUE_AT_ONCE):
            n = min(ENQUEUE_AT_ONCE, count - start)
            await asyncio.gather(*(self.noop.kiq() for _ in range(n)))

    async def backlog(self) -> int:
        # Acknowledged (XACK) but never deleted: not yet read (lag) + read, not acked (pending).
        for group in await self.redis.xinfo_groups(QUEUE):
            if group["name"] in (GROUP, GROUP.encode()):
                return int(group["lag"] or 0) + int(group["pending"])
        raise RuntimeError(f"no consumer group {GROUP!r} on {QUEUE!r}")

    async def call(self) -> None:
        handle = await self.noop.kiq()
        result = await handle.wait_result(timeout=60)
        if result.is_err:
            raise RuntimeError(f"task failed: {result.error!r}")


if __name__ == "__main__":
    _driver.main(TaskiqPeer, ("taskiq", "taskiq-redis", "redis", "hiredis"))
