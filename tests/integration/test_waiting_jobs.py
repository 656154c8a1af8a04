"""A busy worker's look for waiting jobs (broker/waiting_jobs.py) against a real Redis, with
two workers' brokers: what it may take depends on whether another worker has room."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from conveyor.broker import WorkerBroker
from conveyor.broker.keys import GROUP, Keys

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

# long enough that no job of a test ages past it: only "someone has room" is tested
NEVER_S = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the worker runs on asyncio (redis.asyncio)


async def send_jobs(redis_url: str, stream: str, count: int) -> None:
    async with aioredis.Redis.from_url(redis_url) as redis:
        for number in range(count):
            await redis.xadd(stream, {"n": str(number)})


async def test_a_started_worker_that_never_got_a_job_has_room(
    worker_broker: WorkerBroker, redis_url: str, prefix: str
) -> None:
    """The race a new worker lost: it has joined but is between two reads when jobs land.
    Listed from its start, it counts as having room, so a busy worker leaves them."""
    stream = Keys(prefix).jobs("m")
    async with WorkerBroker(redis_url, Keys(prefix), "idle", max_block=0.2) as idle:
        await idle.ensure_groups([stream])
        await worker_broker.ensure_groups([stream])
        await send_jobs(redis_url, stream, 3)
        taken = await worker_broker.take_waiting([stream], 3, NEVER_S, busy=1)
        assert taken == [], "the busy worker took jobs a worker with room waits for"
        assert len(await idle.read_jobs([stream], 3, 0.2)) == 3


async def test_with_no_other_worker_with_room_a_busy_worker_takes_waiting_jobs(
    worker_broker: WorkerBroker, redis_url: str, prefix: str
) -> None:
    """The same look takes the jobs when the other worker holds a batch's worth already."""
    stream = Keys(prefix).jobs("m")
    async with WorkerBroker(redis_url, Keys(prefix), "full", max_block=0.2) as full:
        await full.ensure_groups([stream])
        await worker_broker.ensure_groups([stream])
        await send_jobs(redis_url, stream, 5)
        assert len(await full.read_jobs([stream], 2, 0.2)) == 2  # pending: no room at busy=2
        assert len(await worker_broker.take_waiting([stream], 3, NEVER_S, busy=2)) == 3


async def test_joining_twice_leaves_one_consumer_and_its_pending_jobs(
    worker_broker: WorkerBroker, redis_url: str, prefix: str
) -> None:
    """A worker joins again when Redis lost the group or its models change: its consumer and
    the jobs it holds stay as they are."""
    stream = Keys(prefix).jobs("m")
    await worker_broker.ensure_groups([stream])
    await send_jobs(redis_url, stream, 1)
    assert len(await worker_broker.read_jobs([stream], 1, 0.2)) == 1
    await worker_broker.ensure_groups([stream])
    async with aioredis.Redis.from_url(redis_url) as redis:
        consumers = await redis.xinfo_consumers(stream, GROUP)
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"w1", 1)]
