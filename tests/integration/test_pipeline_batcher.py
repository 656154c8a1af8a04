"""The pipeline batcher (broker/batching.py) against a real Redis: who sends what, and when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis.asyncio.client import Pipeline, Redis
from redis.exceptions import ResponseError

from conveyor.broker import RedisSettings, create_client
from conveyor.broker.pipelining import PipelineBatcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the batcher drives redis.asyncio: asyncio only (trio goes through a bridge)


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = create_client(RedisSettings.from_url(redis_url), max_connections=3)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class _Counting:
    """Counts the round trips a batcher makes: pipelines executed and plain commands."""

    def __init__(self, redis: Redis) -> None:
        self.pipelines = 0
        self.commands = 0
        pipeline, execute_command = redis.pipeline, redis.execute_command

        def counted_pipeline(*args: Any, **kwargs: Any) -> Pipeline:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def counted_execute(*a: Any, **kw: Any) -> list[Any]:
                self.pipelines += 1
                return await execute(*a, **kw)

            pipe.execute = counted_execute  # type: ignore[method-assign]
            return pipe

        async def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.commands += 1
            return await execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped in redis-py

        redis.pipeline = counted_pipeline  # type: ignore[method-assign]
        redis.execute_command = counted_command  # type: ignore[method-assign]


async def test_a_caller_alone_sends_at_once_without_the_flusher(redis: Redis, prefix: str) -> None:
    """No flusher task runs here at all: a lone caller's commands still go out."""
    batcher = PipelineBatcher(redis)
    key = f"{prefix}:alone"
    assert await batcher.run(lambda pipe: pipe.set(key, "v")) == [True]

    def two(pipe: Pipeline) -> None:
        pipe.incr(key + ":n")
        pipe.get(key)

    assert await batcher.run(two) == [1, b"v"]


async def test_concurrent_callers_share_round_trips_and_get_their_own_replies(
    redis: Redis, prefix: str
) -> None:
    counting = _Counting(redis)
    batcher = PipelineBatcher(redis)
    replies: dict[int, list[Any]] = {}

    async def caller(i: int) -> None:
        def add(pipe: Pipeline) -> None:
            pipe.incrby(f"{prefix}:n:{i}", i)
            pipe.echo(f"caller {i}")

        replies[i] = await batcher.run(add)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run_flusher)
        async with anyio.create_task_group() as callers:
            for i in range(200):
                callers.start_soon(caller, i)
        tg.cancel_scope.cancel()
    assert replies == {i: [i, f"caller {i}".encode()] for i in range(200)}
    round_trips = counting.pipelines + counting.commands
    assert round_trips < 20, f"200 callers took {round_trips} round trips"


async def test_a_failing_command_fails_only_its_caller(redis: Redis, prefix: str) -> None:
    batcher = PipelineBatcher(redis)
    text = f"{prefix}:text"
    await redis.set(text, "not a list")
    outcomes: dict[str, object] = {}

    async def bad() -> None:
        try:
            await batcher.run(lambda pipe: pipe.lpush(text, "x"))
        except ResponseError as error:
            outcomes["bad"] = error

    async def good(i: int) -> None:
        outcomes[f"good{i}"] = await batcher.run(lambda pipe: pipe.incr(f"{prefix}:ok:{i}"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run_flusher)
        async with anyio.create_task_group() as callers:
            callers.start_soon(good, 0)
            callers.start_soon(bad)
            callers.start_soon(good, 1)
        tg.cancel_scope.cancel()
    assert "WRONGTYPE" in str(outcomes["bad"])
    assert outcomes["good0"] == [1]
    assert outcomes["good1"] == [1]


async def test_callers_left_waiting_when_the_flusher_stops_get_an_error(
    redis: Redis, prefix: str
) -> None:
    batcher = PipelineBatcher(redis)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await batcher.run(lambda pipe: pipe.incr(f"{prefix}:late"))
        except RuntimeError as error:
            errors.append(error)

    # A lone caller goes out itself: hold the "wire" busy so the next one must queue.
    batcher._sending += 1  # a round trip in progress, as the batcher sees it
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert len(batcher._queue) == 1
        with anyio.CancelScope() as flusher_scope:
            flusher_scope.cancel()
            await batcher.run_flusher()
    assert [str(e) for e in errors] == ["the connection to Redis was closed"]
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.run(lambda pipe: pipe.incr(f"{prefix}:after"))


def _live_wake_ups(batcher: PipelineBatcher) -> list[object]:
    """The loop's pending timers that would wake the batcher's flusher (asyncio's own heap:
    there is no public way to list a loop's timers)."""
    loop = asyncio.get_running_loop()
    return [
        handle
        for handle in loop._scheduled  # type: ignore[attr-defined]
        if not handle.cancelled() and handle._callback == batcher._wake_flusher
    ]


async def test_a_submit_that_rides_with_a_caller_leaves_no_wake_up_behind(
    redis: Redis, prefix: str
) -> None:
    """A submit's latest send (its delay) is a timer; once its commands ride with another
    caller's round trip the timer is cancelled, not left to wake the flusher for nothing."""
    batcher = PipelineBatcher(redis)
    settled: list[Any] = []

    def add(pipe: Pipeline) -> Any:
        pipe.incr(f"{prefix}:submitted")
        return settled.append

    batcher.submit(add, delay_s=30.0)
    assert len(_live_wake_ups(batcher)) == 1
    assert await batcher.run(lambda pipe: pipe.incr(f"{prefix}:caller")) == [1]
    assert settled == [[1]]  # it rode in the caller's round trip
    assert _live_wake_ups(batcher) == []


async def test_a_submit_alone_goes_out_after_its_delay(redis: Redis, prefix: str) -> None:
    batcher = PipelineBatcher(redis)
    settled = anyio.Event()
    replies: list[Any] = []

    def add(pipe: Pipeline) -> Any:
        pipe.incr(f"{prefix}:alone")

        def settle(results: Any) -> None:
            replies.append(results)
            settled.set()

        return settle

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run_flusher)
        await anyio.wait_all_tasks_blocked()
        batcher.submit(add, delay_s=0.05)
        with anyio.fail_after(5):
            await settled.wait()
        tg.cancel_scope.cancel()
    assert replies == [[1]]
    assert _live_wake_ups(batcher) == []
