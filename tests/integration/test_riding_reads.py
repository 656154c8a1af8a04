"""A worker's next read rides with the answers waiting to go (broker/worker_streams.py,
``reads_ride``), against a real Redis: one round trip answers the last jobs and takes the
next; the answers are stored whatever the read meets, and a lost connection leaves the
answered jobs pending, as any flush does."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis

from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.wire import Job, Message, MessageType
from conveyor.embedded import RedisServer
from conveyor.errors import BrokerConnectionError
from tests.support.probe import blocked_readers
from tests.support.waiting import wait_until_async

# the worker runs on asyncio (redis.asyncio)
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]


class Outcomes:
    """What the writer says of each answer: ``ended`` (None once stored) and ``acked``."""

    def __init__(self) -> None:
        self.ended: dict[str, BaseException | None] = {}
        self.acked: list[str] = []


def send_jobs(probe: redis.Redis, stream: str, count: int) -> None:
    for n in range(count):
        probe.xadd(stream, {"id": f"r{n}", "n": str(n)})


def answer(
    broker: WorkerBroker, keys: Keys, delivery: Delivery, outcomes: Outcomes, together: bool
) -> Awaitable[None]:
    """The answer of one delivery (a result that rides in the client's bell), as the runner
    gives it; returns the writer's coroutine."""
    request_id = delivery.entry_id.decode()
    now = time.time()
    job = Job(
        request_id,
        "predict",
        "m",
        None,
        keys.reply("c1", request_id),
        keys.bell("c1"),
        now + 30,
        now,
        inline_reply=True,
    )
    message = Message(MessageType.RESULT, request_id, 1, payload=None, entry=request_id)

    def ended(error: BaseException | None) -> None:
        outcomes.ended[request_id] = error

    return broker.answer(
        delivery,
        job,
        [message],
        now + 30,
        lambda: outcomes.acked.append(request_id),
        ended,
        together,
    )


async def answered_read(
    broker: WorkerBroker, probe: redis.Redis, keys: Keys, count: int, outcomes: Outcomes
) -> list[Delivery]:
    """A read of ``count`` jobs (all sent before it), each answered to ride with the next read."""
    stream = keys.jobs("m")
    await broker.ensure_groups([stream])
    send_jobs(probe, stream, count)
    deliveries = await broker.read_jobs([stream], 8, 0.2)
    assert len(deliveries) == count
    for delivery in deliveries:
        await answer(broker, keys, delivery, outcomes, together=True)
    return deliveries


def reads_processed(probe: redis.Redis) -> int:
    """The socket reads Redis has served (each round trip of a client is at least one)."""
    return int(probe.info("stats")["total_reads_processed"])


async def test_a_read_of_several_jobs_makes_the_next_ride_with_their_answers(
    worker_broker: WorkerBroker, probe: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("m")
    bell = keys.bell("c1")
    await worker_broker.ensure_groups([stream])
    send_jobs(probe, stream, 3)
    first = await worker_broker.read_jobs([stream], 8, 0.2)
    assert len(first) == 3
    assert worker_broker.reads_ride  # jobs queue up: the next read rides
    send_jobs(probe, stream, 2)
    outcomes = Outcomes()
    for delivery in first:
        await answer(worker_broker, keys, delivery, outcomes, together=True)
    assert not outcomes.ended  # waiting for the read: nothing sent yet
    assert probe.llen(bell) == 0
    before = reads_processed(probe)
    second = await worker_broker.read_jobs([stream], 8, 0.2)
    # one round trip for the answers and the read (plus the probe's INFO itself)
    assert reads_processed(probe) - before == 2
    assert [d.fields[b"n"] for d in second] == [b"0", b"1"]
    assert probe.llen(bell) == 3  # the three answers, stored
    assert outcomes.ended == {d.entry_id.decode(): None for d in first}
    # their acks wait for the next round trip: pending until then, never before the answers
    assert probe.xpending(stream, GROUP)["pending"] == 5
    assert await worker_broker.flush_acks()
    assert sorted(outcomes.acked) == sorted(d.entry_id.decode() for d in first)
    assert probe.xpending(stream, GROUP)["pending"] == 2
    assert worker_broker.reads_ride  # the read rode: the next one rides too


async def test_one_job_at_a_time_reads_as_before(
    worker_broker: WorkerBroker, probe: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("m")
    await worker_broker.ensure_groups([stream])
    send_jobs(probe, stream, 1)
    (delivery,) = await worker_broker.read_jobs([stream], 8, 0.2)
    assert not worker_broker.reads_ride  # one job: its answer leaves ahead of the next read
    outcomes = Outcomes()
    await answer(worker_broker, keys, delivery, outcomes, together=False)
    assert outcomes.ended == {delivery.entry_id.decode(): None}  # sent by the answer itself
    assert probe.llen(keys.bell("c1")) == 1
    send_jobs(probe, stream, 1)
    assert len(await worker_broker.read_jobs([stream], 8, 0.2)) == 1
    # no answer waiting: a riding read has nothing to ride with, the read blocks as ever
    assert await worker_broker.read_jobs([stream], 8, 0.05) == []
    assert not worker_broker.reads_ride


async def test_a_riding_read_that_finds_nothing_blocks(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    """Its own server: the only reader there, so CLIENT LIST shows when it blocks."""
    server = redis_server_factory()
    keys = Keys(prefix)
    stream = keys.jobs("m")
    got: list[Delivery] = []
    with redis.Redis.from_url(server.url) as probe:
        async with WorkerBroker(server.url, keys, "w1", max_block=5) as broker:
            outcomes = Outcomes()
            await answered_read(broker, probe, keys, 2, outcomes)

            async def read() -> None:
                got.extend(await broker.read_jobs([stream], 8, 5))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await wait_until_async(lambda: blocked_readers(probe) == 1, "a blocked read")
                # the answers went with the riding read that found nothing, before it blocked
                assert probe.llen(keys.bell("c1")) == 2
                send_jobs(probe, stream, 1)  # the blocked read takes it
            assert [delivery.fields[b"n"] for delivery in got] == [b"0"]
            assert not broker.reads_ride
    assert set(outcomes.ended.values()) == {None}


async def test_a_lost_group_fails_only_the_riding_read_not_its_answers(
    worker_broker: WorkerBroker, probe: redis.Redis, prefix: str
) -> None:
    """Redis lost the group between reads (a restart without persistence): the riding read
    meets NOGROUP, its answers are stored all the same, and the blocking read that follows
    recreates the group, as a blocking read alone does."""
    keys = Keys(prefix)
    stream = keys.jobs("m")
    outcomes = Outcomes()
    await answered_read(worker_broker, probe, keys, 2, outcomes)
    probe.xgroup_destroy(stream, GROUP)
    assert await worker_broker.read_jobs([stream], 8, 0.2) == []
    assert probe.llen(keys.bell("c1")) == 2
    assert set(outcomes.ended.values()) == {None}
    assert [group["name"] for group in probe.xinfo_groups(stream)] == [GROUP.encode()]


async def test_a_lost_connection_fails_the_riding_read_and_leaves_its_jobs_pending(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    server = redis_server_factory()
    keys = Keys(prefix)
    stream = keys.jobs("m")
    with redis.Redis.from_url(server.url) as probe:
        async with WorkerBroker(server.url, keys, "w1", max_block=0.2) as broker:
            outcomes = Outcomes()
            first = await answered_read(broker, probe, keys, 2, outcomes)
            server.kill()
            with pytest.raises(BrokerConnectionError):
                await broker.read_jobs([stream], 8, 0.2)
    assert set(outcomes.ended) == {d.entry_id.decode() for d in first}
    assert all(error is not None for error in outcomes.ended.values())  # not stored: pending
    assert outcomes.acked == []
