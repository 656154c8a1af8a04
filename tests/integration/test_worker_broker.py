"""The worker's face of the broker (broker/worker_broker.py) against a real Redis: every Redis
error leaves it as a ConveyorError, and its heartbeat link reports ACL refusals as text."""

from __future__ import annotations

import anyio
import pytest
import redis

from conveyor.broker import Beat, WorkerBroker
from conveyor.broker.keys import Keys
from conveyor.errors import BrokerCommandError, BrokerConnectionError
from tests.support.probe import wrong_type_stream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the worker runs on asyncio (redis.asyncio)


@pytest.fixture
def broker(worker_broker: WorkerBroker) -> WorkerBroker:
    return worker_broker


async def test_a_key_of_the_wrong_type_is_a_broker_command_error(
    broker: WorkerBroker, redis_url: str, prefix: str
) -> None:
    stream = wrong_type_stream(redis_url, prefix)
    with pytest.raises(BrokerCommandError, match="WRONGTYPE") as caught:
        await broker.ensure_groups([stream])
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(BrokerCommandError, match="WRONGTYPE"):
        await broker.read_inputs(stream, b"0-0", 0.05)


async def test_steps_read_and_write_through_the_face(broker: WorkerBroker, prefix: str) -> None:
    keys = Keys(prefix)
    stream = keys.jobs("m")
    await broker.ensure_groups([stream])
    await broker.ensure_groups([stream])  # BUSYGROUP is no error
    assert await broker.read_jobs([stream], 4, 0.05) == []
    assert await broker.control_cursors([keys.control("m")]) == {keys.control("m"): b"0-0"}
    await broker.publish_limits("m", 10)
    await broker.publish_limits("m", None)
    (seconds, _), before, after = await broker.redis_time()
    assert before <= after
    assert seconds > 0
    assert await broker.leave([stream]) == []


async def test_an_unreachable_redis_is_a_broker_connection_error(
    prefix: str, refused_port: int
) -> None:
    url = f"redis://127.0.0.1:{refused_port}/0"
    async with WorkerBroker(url, Keys(prefix), "w1", max_block=0.2) as broker:
        with pytest.raises(BrokerConnectionError):
            await broker.ping(timeout=2)
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError):
            await broker.read_jobs([Keys(prefix).jobs("m")], 1, 0.05)
        link = broker.heartbeat_link()
        try:
            with pytest.raises(BrokerConnectionError):
                link.time()
        finally:
            link.close()


async def test_the_heartbeat_link_beats_and_unregisters(
    broker: WorkerBroker, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    link = broker.heartbeat_link()
    try:
        now = link.time()
        assert not isinstance(now, str)  # no ACL here: a time, not a refusal
        seconds = now[0]
        beat = link.beat({"id": "w1", "done": 3}, 10.0, float(seconds), 60.0, {})
        assert beat == Beat([], [])
        with redis.Redis.from_url(redis_url) as probe:
            assert probe.hget(keys.worker("w1"), "done") == b"3"
            probe.zadd(keys.workers(), {"gone": float(seconds) - 120})
        beat = link.beat({"id": "w1"}, 10.0, float(seconds), 60.0, {})
        assert beat.silent == ["gone"]
        assert link.forget_dead(beat.silent) == ["gone"]
        link.unregister()
        with redis.Redis.from_url(redis_url) as probe:
            assert not probe.exists(keys.worker("w1"))
            assert probe.zcard(keys.workers()) == 0
    finally:
        link.close()
