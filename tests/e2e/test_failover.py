"""A failover under load: the Redis a worker and a client use becomes a replica for a while
(its replica promoted, as Sentinel or a managed Redis does), then primary again.

Redis answers writes there with READONLY and ends blocking reads with "UNBLOCKED ... (master
-> replica?)". Both pass like an outage (broker.errors, broker.clients): the worker waits,
says why, and serves again; every call in flight gets its one right answer. Before, the
worker stopped at the first of them and the calls timed out.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import anyio
import numpy as np
import pytest
import redis

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CALLERS = 8


def in_sync(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return bool(info["role"] == "slave" and info["master_link_status"] == "up")


def primary(server: redis.Redis) -> bool:
    return bool(server.info("replication")["role"] == "master")


@pytest.fixture
def pair(
    redis_server_factory: Callable[..., RedisServer],
) -> Iterator[tuple[RedisServer, RedisServer, redis.Redis, redis.Redis]]:
    """A primary and its replica (started, not yet in sync), and a client to each."""
    main, spare = redis_server_factory(), redis_server_factory()
    first, second = redis.Redis(port=main.port), redis.Redis(port=spare.port)
    try:
        second.replicaof("127.0.0.1", main.port)
        yield main, spare, first, second
    finally:
        first.close()
        second.close()


async def test_a_failover_and_back_loses_no_call_and_the_worker_serves_on(
    pair: tuple[RedisServer, RedisServer, redis.Redis, redis.Redis], prefix: str
) -> None:
    main, spare, first, second = pair
    await wait_until_async(lambda: in_sync(second), "the replica in sync")
    answered: collections.Counter[int] = collections.Counter()
    failed: list[str] = []
    with Fleet(main.url, prefix) as fleet:
        worker = fleet.start(MODELS / "echo")
        async with Client(main.url, prefix=prefix, timeout=60) as client:
            echo = client.model("echo")
            stop = anyio.Event()

            async def caller(number: int) -> None:
                value = 0
                while not stop.is_set():
                    value += 1
                    try:
                        answer = await echo.predict(request(float(value)))
                    except ConveyorError as error:
                        failed.append(f"{type(error).__name__}: {error}")
                        return
                    assert np.asarray(answer.outputs[0].data.root).tolist() == [float(value)]
                    answered[number] += 1

            async with anyio.create_task_group() as callers:
                for number in range(CALLERS):
                    callers.start_soon(caller, number)
                await wait_until_async(lambda: sum(answered.values()) >= 200, "calls answered")
                # Failover: the replica is promoted, the primary follows it.
                second.replicaof("NO", "ONE")
                first.replicaof("127.0.0.1", spare.port)
                await wait_until_async(lambda: in_sync(first), "the old primary a replica")
                said = await worker.wait_for_log_async("read-only replica", 30)
                assert "worker.redis_unavailable" in said
                # And back, as a failover back or a name that points at the new primary does.
                first.replicaof("NO", "ONE")
                second.replicaof("127.0.0.1", main.port)
                await wait_until_async(lambda: primary(first), "the old primary again")
                before = sum(answered.values())
                await wait_until_async(
                    lambda: sum(answered.values()) >= before + 200, "calls after", 60
                )
                stop.set()
        assert worker.process.poll() is None, worker.log()
    assert not failed, failed
    assert all(answered[number] for number in range(CALLERS)), answered
